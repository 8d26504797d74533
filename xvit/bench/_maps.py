"""``--save-maps``: every method's raw maps in one file, ``OUT/maps/<method>.safetensors``.

Maps are written as they are computed, like the results: one part per method and batch under
``OUT/maps/.parts/<method>/``, each an :class:`~xvit.Explanation` file written whole (beside
its name, then renamed), before the batch's records are appended to the results. When the run
ends, rank 0 folds the parts and the method's earlier file into the method's one file (the
run's images first, in dataset order, then any others an earlier run saved; a later map of an
image replaces an earlier one) and removes the parts. :func:`xvit.load_explanation` reads it.

A resumed run knows from the files which (image, method) pairs have a saved map; a pair whose
scores an earlier run computed without ``--save-maps`` is explained and scored again, so that
every saved map is the map its scores came from. Maps made with another model (another hash
of the weights) are never mixed into one file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._errors import InvalidInputError
from ..explanation import Explanation, load_explanation

#: The folder of the saved maps, in the output folder.
MAPS_DIR = "maps"

_PARTS = ".parts"
_PART = re.compile(r"(?P<time>\d+)-r(?P<rank>\d+)-(?P<seq>\d+)\.safetensors")


def file_name(method: str) -> str:
    """The file of a method's maps (characters other than letters, digits, ``.-_`` become
    ``_``).

    Example:
        >>> file_name("gradmask"), file_name("my/method")
        ('gradmask.safetensors', 'my_method.safetensors')
    """
    return re.sub(r"[^\w.-]", "_", method) + ".safetensors"


class MapStore:
    """The saved maps of one output folder.

    Args:
        out: The benchmark's output folder.
        rank: This process's rank (names its parts).
        metadata: What every saved file records beside the maps (the model and its hash,
            the dataset, the target rule, the seed).
    """

    def __init__(self, out: Path, rank: int = 0, metadata: dict[str, Any] | None = None):
        self.folder = out / MAPS_DIR
        self.rank = rank
        self.metadata = dict(metadata or {})
        self._written = 0

    def _parts(self, method: str) -> Path:
        return self.folder / _PARTS / file_name(method)[: -len(".safetensors")]

    def write(self, explanation: Explanation) -> None:
        """Save one batch's maps of one method (its ``ids`` name the images)."""
        explanation.metadata = {**self.metadata, **explanation.metadata}
        self._written += 1
        name = f"{time.time_ns()}-r{self.rank}-{self._written}.safetensors"
        explanation.save(self._parts(explanation.method) / name)

    def saved(self) -> set[tuple[str, str]]:
        """The (image id, method) pairs with a saved map, in a method's file or its parts."""
        pairs: set[tuple[str, str]] = set()
        for path in [*self.folder.glob("*.safetensors"), *self.folder.glob(f"{_PARTS}/*/*")]:
            if path.name.endswith(".safetensors") and not path.name.startswith("."):
                method, ids = _method_and_ids(path)
                pairs.update((i, method) for i in ids)
        return pairs

    def finish(self, method: str, params: dict[str, Any], ids: Sequence[str]) -> Path | None:
        """Fold the parts and the earlier file of ``method`` into its one file.

        Args:
            method: The method.
            params: Its parameters (recorded in the file).
            ids: The run's image ids, in dataset order (they come first in the file).

        Returns:
            The method's file (None when it has no saved map at all).

        Raises:
            InvalidInputError: A part or the earlier file was made with another model (the
                hash of its weights differs) or its maps have another shape.
        """
        target = self.folder / file_name(method)
        parts = sorted(self._parts(method).glob("*.safetensors"), key=_part_order)
        if not parts:
            return target if target.exists() else None
        sources = ([target] if target.exists() else []) + parts
        maps: dict[str, tuple[torch.Tensor, int, float]] = {}
        size: tuple[int, int] | None = None
        for path in sources:
            e = load_explanation(path)
            self._check(path, e, maps)
            size = e.input_size
            for j, image in enumerate(e.ids or []):
                maps[image] = (e.map[j], int(e.targets[j]), float(e.probabilities[j]))
        wanted = set(ids)
        order = [i for i in ids if i in maps] + [i for i in maps if i not in wanted]
        explanation = Explanation(
            map=torch.stack([maps[i][0] for i in order]),
            method=method,
            targets=torch.tensor([maps[i][1] for i in order], dtype=torch.long),
            probabilities=torch.tensor([maps[i][2] for i in order], dtype=torch.float32),
            params=params,
            input_size=size or (0, 0),
            ids=order,
            metadata=self.metadata,
        )
        explanation.save(target)
        for path in parts:
            path.unlink()
        for folder in (self._parts(method), self.folder / _PARTS):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return target

    def _check(
        self, path: Path, e: Explanation, maps: dict[str, tuple[torch.Tensor, int, float]]
    ) -> None:
        ours, theirs = self.metadata.get("model_hash"), e.metadata.get("model_hash")
        if ours and theirs and ours != theirs:
            raise InvalidInputError(
                f"{path} holds maps of another model (weights {theirs}, this run's "
                f"{ours}); move {self.folder} aside, or use another output folder"
            )
        shape = next(iter(maps.values()))[0].shape if maps else None
        if shape is not None and e.map.shape[1:] != shape:
            raise InvalidInputError(
                f"{path} holds {tuple(e.map.shape[1:])} maps, the others {tuple(shape)}; "
                f"move {self.folder} aside, or use another output folder"
            )


def _part_order(path: Path) -> tuple[int, int, int]:
    match = _PART.fullmatch(path.name)
    if match is None:
        return (0, 0, 0)
    return int(match.group("time")), int(match.group("rank")), int(match.group("seq"))


def _method_and_ids(path: Path) -> tuple[str, list[str]]:
    """A saved file's method and image ids, from its metadata only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
            meta = f.metadata() or {}
        ids = json.loads(meta.get("ids", "null")) or []
        return str(meta["method"]), [str(i) for i in ids]
    except Exception as exc:  # safetensors' own errors for a corrupt file, or bad metadata
        raise InvalidInputError(
            f"{path} is not a readable file of saved maps ({type(exc).__name__}: {exc}); "
            f"remove it (its maps are computed again) and run the same command again"
        ) from None


def missing_maps(
    done: Iterable[tuple[str, str]], saved: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The finished (image id, method) pairs without a saved map.

    Example:
        >>> missing_maps([("a", "m"), ("b", "m")], {("a", "m")})
        [('b', 'm')]
    """
    return [pair for pair in done if pair not in saved]
