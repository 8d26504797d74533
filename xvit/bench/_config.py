"""How a benchmark runs, checked once: :class:`BenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._errors import ParameterError

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
        >>> config.batch_size, config.out_dir.name  # the defaults, and a folder as a Path
        (16, 'bench-out')
        >>> BenchConfig(batch_size=0)
        Traceback (most recent call last):
        ...
        xvit._errors.ParameterError: batch_size must be a positive integer, got 0
    """

    n: int | None = 200
    batch_size: int = 16
    device: str | torch.device | None = None
    seed: int = 0
    target: str = "label"
    out_dir: Path | None = None
    resume: bool = True
    progress: bool = True
    distributed: bool | None = None
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ParameterError(f"target must be 'label' or 'prediction', got {self.target!r}")
        _check_positive_int("batch_size", self.batch_size)
        if self.n is not None:
            _check_positive_int("n", self.n)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ParameterError(f"seed must be an integer, got {self.seed!r}")
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ParameterError(f"timeout must be a positive number of seconds, got {timeout!r}")
        object.__setattr__(self, "timeout", float(timeout))
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir))


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}")
