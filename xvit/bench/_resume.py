"""Resuming a run from its output folder: ``run.json`` describes the results beside it and must
match the run's settings; what the results already hold is not computed again; starting over
moves the old files aside, never deletes them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._errors import InvalidInputError, ParameterError
from ._distributed import clear_failures
from ._manifest import MANIFEST_FILE
from ._maps import MAPS_DIR
from ._report import write_json
from ._store import load_results, result_files

#: The file that describes the results beside it.
CONFIG_FILE = "run.json"

#: Settings that must be equal to resume (methods and metrics are compared by name).
FIXED_KEYS = ("model", "dataset", "target", "seed")

Records = dict[tuple[str, str], dict[str, Any]]


def prepare_folder(out: Path, config: dict[str, Any], resume: bool) -> Records:
    """Before any rank writes: check and load the folder's results (or move them aside when
    not ``resume``), and write ``run.json``.

    ``config`` is updated in place with the method and metric parameters of earlier runs.

    Returns:
        The records already in the folder, by (image id, method).

    Raises:
        InvalidInputError: An unreadable ``run.json`` or results file.
        ParameterError: The folder's results were computed with other settings.
    """
    out.mkdir(parents=True, exist_ok=True)
    done: Records = {}
    if resume:
        old = _read_config(out / CONFIG_FILE)
        if old is not None:
            _check_resume(out / CONFIG_FILE, old, config)
        done = load_results(out)
        for kind in ("methods", "metrics"):
            config[kind] = {**(old or {}).get(kind, {}), **config[kind]}
    else:
        _move_aside(out)
    clear_failures(out)
    write_json(out / CONFIG_FILE, config)
    return done


def to_do(
    samples: Sequence[Any],
    done: Records,
    methods: Sequence[str],
    metrics: Sequence[str],
    saved_maps: set[tuple[str, str]] | None = None,
) -> dict[str, list[str]]:
    """Image id -> the methods still to run on it, in dataset order (images with none left
    out). A pair is done when its record has a score of every metric and, when
    ``saved_maps`` is given (a run that saves its maps), its map is among them.

    Example:
        >>> from types import SimpleNamespace as S
        >>> done = {("a", "m1"): {"scores": {"ins": 0.5}}}
        >>> to_do([S(id="a"), S(id="b")], done, ["m1", "m2"], ["ins"])
        {'a': ['m2'], 'b': ['m1', 'm2']}
    """
    todo = {}
    for s in samples:
        left = [
            m
            for m in methods
            if not _finished(done.get((s.id, m)), metrics)
            or (saved_maps is not None and (s.id, m) not in saved_maps)
        ]
        if left:
            todo[s.id] = left
    return todo


def _finished(record: Mapping[str, Any] | None, metrics: Sequence[str]) -> bool:
    return record is not None and all(m in record["scores"] for m in metrics)


def _read_config(path: Path) -> dict[str, Any] | None:
    """The settings of the results in ``path``'s folder; None when there is no such file."""
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{path} is not readable JSON ({exc}); it describes the results beside it, so the "
            f"run stops: restore it, or start over with another output folder"
        ) from None
    return old  # type: ignore[no-any-return]


def _check_resume(path: Path, old: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    for key in FIXED_KEYS:
        if old.get(key) != config[key]:
            raise ParameterError(
                f"the results in {path.parent} were computed with {key}={old.get(key)!r}, not "
                f"{config[key]!r}; resuming would mix them. Use another output folder, or "
                f"--no-resume to move the old results aside"
            )
    for kind in ("metrics", "methods"):
        for name, params in config[kind].items():
            before = old.get(kind, {}).get(name)
            if before is not None and before != params:
                raise ParameterError(
                    f"{kind[:-1]} {name!r} ran with {before} in {path.parent}, now with "
                    f"{params}; use another output folder, or --no-resume"
                )


def _move_aside(out: Path) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for p in [*result_files(out), out / CONFIG_FILE, out / MANIFEST_FILE, out / MAPS_DIR]:
        if p.exists():
            p.rename(out / f"{p.stem}-{stamp}{p.suffix}")
