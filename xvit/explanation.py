"""The result of an explanation: maps plus everything needed to interpret them, saved to and
loaded from one safetensors file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._errors import InvalidInputError

#: What a saved explanation's metadata says it is, and the layout's version.
FILE_FORMAT = "xvit.explanation"
FILE_VERSION = 1


@dataclass
class Explanation:
    """Saliency maps for a batch, with the targets and settings that produced them.

    Attributes:
        map: B x h x w maps at the method's native resolution (the patch grid for GradMask).
        method: Registry name of the method.
        targets: (B,) classes explained; -1 for every image explained by a score function
            (a callable ``target``, see :func:`xvit.explain`).
        probabilities: (B,) the model's probability of each target on the unmasked input;
            for a score function, its score of each unmasked input (not a probability).
        params: Parameter values the method ran with.
        input_size: (H, W) of the model input.
        inputs: The preprocessed B x C x H x W batch that was explained.
        images: The original images (PIL) when the inputs were files, images or arrays.
        class_names: A readable name per target when the model carries labels; for a score
            function, its ``__name__`` (or "custom score" for a lambda) for every image.
        ids: An identifier per image (a benchmark's image ids in its saved maps), or None.
        metadata: Anything else recorded with the maps (for a benchmark's saved maps: the
            model's hash, the dataset, the run's seed), JSON-ready.

    Example:
        >>> import torch
        >>> e = Explanation(torch.ones(1, 2, 2), "x", torch.tensor([0]), torch.tensor([1.0]),
        ...                 {}, (4, 4))
        >>> e.upsample().shape
        torch.Size([1, 4, 4])
    """

    map: torch.Tensor
    method: str
    targets: torch.Tensor
    probabilities: torch.Tensor
    params: dict[str, Any]
    input_size: tuple[int, int]
    inputs: torch.Tensor | None = None
    images: list[Any] | None = None
    class_names: list[str] = field(default_factory=list)
    ids: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.map.shape[0])

    def upsample(self, size: tuple[int, int] | None = None, mode: str = "nearest") -> torch.Tensor:
        """Maps at input resolution (or ``size``), B x H x W.

        ``mode="nearest"`` keeps the patch grid (as the paper's metrics do); ``"bilinear"``
        is smoother for display.
        """
        size = size or self.input_size
        m = self.map.float().unsqueeze(1)
        if mode == "nearest":
            up = F.interpolate(m, size=size, mode="nearest")
        else:
            up = F.interpolate(m, size=size, mode=mode, align_corners=False)
        return up.squeeze(1)

    def normalized(self) -> torch.Tensor:
        """Each map min-max scaled to [0, 1] (constant maps become 0)."""
        flat = self.map.float().flatten(1)
        lo = flat.min(1, keepdim=True).values
        hi = flat.max(1, keepdim=True).values
        scaled = (flat - lo) / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
        return scaled.view_as(self.map)

    def save(self, path: str | Path, *, inputs: bool = False) -> Path:
        """Write the explanation to one safetensors file; :func:`load_explanation` reads it.

        The file holds the maps, targets and probabilities as tensors (``inputs``: also the
        preprocessed inputs, B x C x H x W, which can be large) and the rest as JSON in its
        metadata: method, parameters (values JSON cannot hold are stored as their
        ``repr``), input size, class names, ids and ``metadata``. The original PIL images
        are not saved. The file is written beside ``path`` and renamed over it, so an
        interruption never leaves half a file.

        Args:
            path: The file to write (``.safetensors`` by convention); its folder is created.
            inputs: Whether to store :attr:`inputs` too.

        Returns:
            The path written.

        Raises:
            InvalidInputError: The fields do not describe one batch (maps, targets,
                probabilities or ids of different lengths), or ``inputs`` is asked for and
                there are none.

        Example:
            >>> import tempfile, torch, xvit
            >>> e = Explanation(torch.rand(2, 4, 4), "random", torch.tensor([3, 1]),
            ...                 torch.tensor([0.9, 0.4]), {"seed": 0}, (32, 32), ids=["a", "b"])
            >>> path = e.save(tempfile.mkdtemp() + "/random.safetensors")
            >>> back = xvit.load_explanation(path)
            >>> torch.equal(back.map, e.map), back.ids, back.params, back.input_size
            (True, ['a', 'b'], {'seed': 0}, (32, 32))
        """
        b = len(self)
        tensors = {"map": self.map, "targets": self.targets, "probabilities": self.probabilities}
        if inputs:
            if self.inputs is None:
                raise InvalidInputError(
                    "save(inputs=True) but this explanation holds no inputs; save without them"
                )
            tensors["inputs"] = self.inputs
        if self.map.dim() != 3:
            raise InvalidInputError(f"map must be B x h x w to save, got {tuple(self.map.shape)}")
        for name, value in [*tensors.items(), ("ids", self.ids)]:
            if value is not None and len(value) != b:
                raise InvalidInputError(
                    f"cannot save: {b} maps but {len(value)} {name}; every field must "
                    f"describe the same images"
                )
        meta = {
            "format": FILE_FORMAT,
            "version": str(FILE_VERSION),
            "method": self.method,
            "params": json.dumps(self.params, default=repr),
            "input_size": json.dumps([int(v) for v in self.input_size]),
            "class_names": json.dumps(list(self.class_names)),
            "ids": json.dumps(None if self.ids is None else [str(i) for i in self.ids]),
            "metadata": json.dumps(self.metadata, default=repr),
        }
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(cpu, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path


def load_explanation(path: str | Path) -> Explanation:
    """The explanation saved in ``path`` by :meth:`Explanation.save` (or ``xvit bench
    --save-maps``), with its tensors on the CPU.

    Raises:
        InvalidInputError: No such file, a file that is not safetensors, or one that is not
            a saved xvit explanation (or was saved by a newer xvit).

    Example:
        >>> import tempfile, torch, xvit
        >>> e = Explanation(torch.ones(1, 2, 2), "x", torch.tensor([0]), torch.tensor([1.0]),
        ...                 {}, (4, 4), metadata={"model_hash": "sha256:..."})
        >>> xvit.load_explanation(e.save(tempfile.mkdtemp() + "/x.safetensors")).metadata
        {'model_hash': 'sha256:...'}
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"no file {path}; pass the path of a file written by Explanation.save or by "
            f"xvit bench --save-maps (OUT/maps/METHOD.safetensors)"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for a corrupt file
        raise InvalidInputError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); it may "
            f"be truncated or not an explanation: save it again"
        ) from None
    if meta.get("format") != FILE_FORMAT:
        raise InvalidInputError(
            f"{path} is a safetensors file but not a saved xvit explanation (its metadata has "
            f"no format={FILE_FORMAT!r}); load it with safetensors instead"
        )
    if int(meta.get("version", "0")) > FILE_VERSION:
        raise InvalidInputError(
            f"{path} was saved by a newer xvit (format version {meta['version']}, this one "
            f"reads {FILE_VERSION}); upgrade xvit to load it"
        )
    try:
        fields = {k: json.loads(meta[k]) for k in ("params", "input_size", "class_names")}
        fields.update({k: json.loads(meta[k]) for k in ("ids", "metadata")})
        map_, targets, probs = (tensors[k] for k in ("map", "targets", "probabilities"))
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(
            f"{path} is an incomplete saved explanation (missing or unreadable {exc}); save it "
            f"again"
        ) from None
    return Explanation(
        map=map_,
        method=meta.get("method", ""),
        targets=targets,
        probabilities=probs,
        params=fields["params"],
        input_size=(int(fields["input_size"][0]), int(fields["input_size"][1])),
        inputs=tensors.get("inputs"),
        class_names=fields["class_names"],
        ids=fields["ids"],
        metadata=fields["metadata"],
    )
