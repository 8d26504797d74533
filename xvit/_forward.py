"""How a component runs its model forwards: inputs per forward, precision, compilation.

Methods that score masked images and metrics that score perturbed images both run many
forwards of the model. Their three knobs live in one object, :class:`ForwardOptions`, with
one constraint each, so that they mean the same thing everywhere:

- ``batch_size``: model inputs (masked or perturbed images) per forward pass, or "auto" to
  size it from free device memory (64 on a CPU). It never means images explained per call:
  the benchmark's ``images_per_call`` sizes that.
- ``precision``: "fp32", or "bf16" for bfloat16 autocast of those forwards.
- ``compile``: whether those forwards go through ``torch.compile``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from ._constraints import Flag, Integer, Literal, OneOf, Rule, Spec, check_params

#: The precisions a forward can run in.
PRECISIONS = ("fp32", "bf16")

#: Inputs per forward on a CPU under ``batch_size="auto"``.
CPU_AUTO_BATCH = 64

#: Upper bound of an "auto" batch on an accelerator.
MAX_AUTO_BATCH = 1024

#: Per device, the largest "auto" batch known to fit after an out-of-memory error there:
#: later "auto" batches on that device stay at or below it.
_AUTO_LIMITS: dict[str, int] = {}

#: Per device, the "auto" batch size handed out last (the one an out-of-memory error hit).
_AUTO_LAST: dict[str, int] = {}

T = TypeVar("T")

#: Constraints of the three options, for the tables of the classes that take them.
FORWARD_CONSTRAINTS: dict[str, Spec] = {
    "batch_size": Rule(
        Integer(low=1), Literal("auto"), note="it counts model inputs per forward pass"
    ),
    "precision": OneOf(*PRECISIONS),
    "compile": Flag(),
}


@dataclass(frozen=True)
class ForwardOptions:
    """Inputs per forward, precision and compilation of a component's forwards.

    Example:
        >>> ForwardOptions(batch_size=32, precision="bf16")
        ForwardOptions(batch_size=32, precision='bf16', compile=False)
        >>> ForwardOptions(batch_size=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        xvit._errors.ParameterError: forward options: batch_size must be a positive integer ...
    """

    batch_size: int | str = 64
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        values = {
            "batch_size": self.batch_size,
            "precision": self.precision,
            "compile": self.compile,
        }
        for key, value in check_params("forward options", FORWARD_CONSTRAINTS, values).items():
            object.__setattr__(self, key, value)

    def inputs_per_forward(self, device: torch.device, per_input_bytes: int) -> int:
        """The concrete batch size: ``batch_size``, or for "auto" one sized from the free
        memory of ``device`` (activations of a ViT forward are about 40x the input; half of
        the free memory is kept free), at most :data:`MAX_AUTO_BATCH`;
        :data:`CPU_AUTO_BATCH` on a CPU."""
        return resolve_batch_size(self.batch_size, device, per_input_bytes)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments (``batch_size=..., precision=..., compile=...``)."""
        return {"batch_size": self.batch_size, "precision": self.precision, "compile": self.compile}


class TakesForwardOptions:
    """Mixin of a configurable component (a method, a metric) that takes ``batch_size``,
    ``precision`` and ``compile`` as its own parameters: it declares their constraints
    (merged into the component's table by :class:`~xvit._configurable.Configurable`) and
    bundles the stored values as :attr:`forward_options`.

    Example:
        >>> from xvit._configurable import Configurable
        >>> class Scorer(TakesForwardOptions, Configurable):
        ...     name = "scorer"
        ...     def __init__(self, *, batch_size=64, precision="fp32", compile=False):
        ...         self.batch_size, self.precision, self.compile = batch_size, precision, compile
        >>> Scorer(batch_size="auto").forward_options
        ForwardOptions(batch_size='auto', precision='fp32', compile=False)
        >>> Scorer(precision="fp16")
        Traceback (most recent call last):
        ...
        xvit._errors.ParameterError: scorer: precision must be one of 'fp32', 'bf16', got 'fp16'
    """

    parameter_constraints: ClassVar[dict[str, Spec]] = FORWARD_CONSTRAINTS
    batch_size: int | str
    precision: str
    compile: bool

    @property
    def forward_options(self) -> ForwardOptions:
        """The component's ``batch_size``, ``precision`` and ``compile`` as one object."""
        return ForwardOptions(self.batch_size, self.precision, self.compile)


def resolve_batch_size(batch_size: int | str, device: torch.device, per_input_bytes: int) -> int:
    """A concrete number of inputs per forward for ``batch_size`` (see
    :meth:`ForwardOptions.inputs_per_forward`)."""
    if batch_size != "auto":
        return int(batch_size)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        estimate = max(1, int(free * 0.5 // max(per_input_bytes * 40, 1)))
        size = int(min(estimate, MAX_AUTO_BATCH))
    else:
        size = CPU_AUTO_BATCH
    size = min(size, _AUTO_LIMITS.get(str(device), size))
    _AUTO_LAST[str(device)] = size
    return size


def backing_off(run: Callable[[], T], device: torch.device, batch_size: int | str, what: str) -> T:
    """``run()``; under ``batch_size="auto"``, when it runs out of device memory, the "auto"
    batch of ``device`` is halved (and stays so for later calls) and ``run`` starts again,
    until it fits or the batch is 1. Says so once per call, with a warning. The results are
    those of a run at the smaller batch: batching never changes what a method computes.

    A fixed ``batch_size`` is left alone: the error is raised, and the fix is a smaller
    ``batch_size`` or "auto".
    """
    key = str(device)
    told = False
    while True:
        try:
            return run()
        except torch.cuda.OutOfMemoryError:
            last = _AUTO_LAST.get(key, 1)
            if batch_size != "auto" or last <= 1:
                raise
            _AUTO_LIMITS[key] = smaller = last // 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if not told:
                warnings.warn(
                    f"{what}: out of memory on {device} at {last} inputs per forward; "
                    f"retrying with {smaller} (batch_size='auto' halves until it fits and "
                    f"keeps that limit on {device} for later calls)",
                    ResourceWarning,
                    stacklevel=3,
                )
                told = True


def reset_auto_limits() -> None:
    """Forget every device's "auto" batch limit learnt from out-of-memory errors."""
    _AUTO_LIMITS.clear()
    _AUTO_LAST.clear()
