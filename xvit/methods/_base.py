"""The contract every explanation method follows."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._configurable import Configurable
from .._errors import ParameterError
from ..models._base import Geometry, ModelAdapter

#: A gradient pass costs about this many forwards: its forward plus a backward of about
#: twice the forward's work.
GRADIENT_PASS_FORWARDS = 3


@dataclass(frozen=True)
class Cost:
    """The passes through the model that explaining one image takes.

    Attributes:
        forwards: Forward passes without gradients (masked copies, captures).
        gradient_passes: Forward passes followed by a backward.
        at_most: True when the counts are an upper bound: the method skips work that it
            finds redundant only while it runs (identical masks, fewer clusters).

    Example:
        >>> c = Cost(forwards=24, gradient_passes=1, at_most=True)
        >>> c.describe(images=2), c.seconds(per_forward=0.5, images=2)
        ('up to 48 forwards and 2 gradient passes', 27.0)
    """

    forwards: int = 0
    gradient_passes: int = 0
    at_most: bool = False

    def seconds(self, per_forward: float, images: int = 1) -> float:
        """Estimated time for ``images`` images at ``per_forward`` seconds per image-forward."""
        work = self.forwards + GRADIENT_PASS_FORWARDS * self.gradient_passes
        return images * work * per_forward

    def describe(self, images: int = 1) -> str:
        """The counts for ``images`` images in words."""
        parts = []
        if self.forwards:
            parts.append(_count(images * self.forwards, "forward", "forwards"))
        if self.gradient_passes:
            n = images * self.gradient_passes
            parts.append(_count(n, "gradient pass", "gradient passes"))
        text = " and ".join(parts) or "no forward"
        return f"up to {text}" if self.at_most else text


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class Explainer(Configurable, ABC):
    """Base class of explanation methods.

    A method is configured by keyword arguments to ``__init__`` (validated there, with a
    :class:`~xvit.ParameterError` naming the problem and the valid range) and explains a batch
    with :meth:`attribute`: B preprocessed images and B target classes in, B saliency maps out
    (B x h x w, at the method's native resolution, on the input's device). :meth:`cost`
    declares the passes through the model that one image takes, for the estimate and the
    progress of long calls.

    Class attributes declare what the method is, for listings and for the runner:

    Attributes:
        name: Registry name.
        summary: One line for ``xvit list``.
        paper: The paper the method implements.
        family: "gradient+mask", "attention", "attention+gradient", "cam", "perturbation".
        needs_gradients: Whether it backpropagates through the model.
        needs_attention: Whether it reads attention probabilities.
        randomized: Whether it draws random numbers (then it takes a ``seed``).
        quick_params: Parameters for a cheap but valid run (used by smoke tests and demos).

    Example:
        >>> import torch, xvit
        >>> class Uniform(xvit.Explainer):
        ...     name = "uniform-example"
        ...     def attribute(self, adapter, inputs, target):
        ...         gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
        ...         return torch.ones(len(inputs), gh, gw, device=inputs.device)
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> xvit.explain(Uniform(), model, torch.randn(2, 3, 64, 64)).map.shape
        torch.Size([2, 8, 8])
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    family: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False
    randomized: ClassVar[bool] = False
    quick_params: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def attribute(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Saliency maps (B x h x w) for preprocessed ``inputs`` (B x C x H x W) on the
        model's device and integer ``target`` (B,). Runs with the model in eval mode."""

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """The passes through the model :meth:`attribute` makes per image, with these
        parameters on a model of this geometry and inputs of ``input_size`` (H, W).

        :func:`xvit.explain` uses it, with the time of one forward measured on the device,
        to warn before a long run and to show progress within one. The default is one pass:
        a gradient pass when the method declares ``needs_gradients``, else one forward.
        Methods that make more override it (the shared mask-scoring kernel reports the
        forwards it makes, so the progress of such methods moves within a batch).
        """
        if type(self).needs_gradients:
            return Cost(gradient_passes=1)
        return Cost(forwards=1)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def check_positive_int(name: str, value: Any, method: str) -> int:
    """Validate a positive integer parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ParameterError(f"{method}: {name} must be a positive integer, got {value!r}")
    return value


def check_batch_size(value: Any, method: str) -> int | str:
    """``batch_size``: a positive integer or "auto"."""
    if value == "auto":
        return "auto"
    return check_positive_int("batch_size", value, method)


def check_finite_number(name: str, value: Any, method: str) -> float:
    """Validate a real, finite number (e.g. a fill value in the model's input space)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"{method}: {name} must be a finite number, got {value!r}")
    return float(value)


def check_flag(name: str, value: Any, method: str) -> bool:
    """Validate an on/off parameter: True or False, nothing else."""
    if not isinstance(value, bool):
        raise ParameterError(f"{method}: {name} must be True or False, got {value!r}")
    return value
