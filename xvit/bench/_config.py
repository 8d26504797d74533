"""How a benchmark runs, checked once: :class:`BenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from .._constraints import Flag, Integer, Literal, OneOf, Real, Rule, Spec, check_params

#: What ``target`` may be: the dataset's class, or the model's class on the clean image.
TARGETS = ("label", "prediction")


@dataclass(frozen=True)
class BenchConfig:
    """How :func:`~xvit.bench.run_benchmark` runs: the images, their batches and targets,
    the device, the seed, the output folder and how the ranks of a distributed run meet.

    The values are checked when the object is made. The attributes are the keyword
    arguments of :func:`~xvit.bench.run_benchmark`, documented there.

    Example:
        >>> config = BenchConfig(n=50, target="prediction", out_dir="bench-out")
        >>> config.images_per_call, config.out_dir.name  # the defaults, and a folder as a Path
        (16, 'bench-out')
        >>> BenchConfig(images_per_call=0)
        Traceback (most recent call last):
        ...
        xvit._errors.ParameterError: images_per_call must be a positive integer, got 0
    """

    n: int | None = 200
    images_per_call: int = 16
    device: str | torch.device | None = None
    seed: int = 0
    target: str = "label"
    out_dir: Path | None = None
    resume: bool = True
    progress: bool = True
    distributed: bool | None = None
    timeout: float = 3600.0
    save_maps: bool = False

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in check_params("", CONSTRAINTS, values).items():
            object.__setattr__(self, key, value)
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir))


#: What each setting of a run accepts.
CONSTRAINTS: dict[str, Spec] = {
    "n": Rule(Integer(low=1), Literal(None, "every image")),
    "images_per_call": Integer(low=1),
    "seed": Integer(),
    "target": OneOf(*TARGETS),
    "resume": Flag(),
    "progress": Flag(),
    "distributed": Rule(Flag(), Literal(None, "from torchrun's environment")),
    "timeout": Rule(Real(low=0, low_open=True), note="it counts seconds"),
    "save_maps": Flag(),
}
