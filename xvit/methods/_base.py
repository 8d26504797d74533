"""The contract every explanation method follows."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from .._configurable import Configurable
from .._errors import ParameterError
from ..models._base import ModelAdapter


class Explainer(Configurable, ABC):
    """Base class of explanation methods.

    A method is configured by keyword arguments to ``__init__`` (validated there, with a
    :class:`~xvit.ParameterError` naming the problem and the valid range) and explains a batch
    with :meth:`attribute`: B preprocessed images and B target classes in, B saliency maps out
    (B x h x w, at the method's native resolution, on the input's device).

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
