"""The contract every metric follows, and the helpers metrics share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._configurable import Configurable
from .._errors import InvalidInputError, ParameterError
from ..explanation import Explanation

#: Ground truth for the localisation metrics: per image a sequence of (x0, y0, x1, y1) boxes
#: in model-input pixel coordinates, or a B x H x W boolean mask.
Boxes = Sequence[Sequence[Sequence[float]]] | torch.Tensor


@dataclass
class MetricResult:
    """Per-image scores of one metric on one batch.

    Attributes:
        metric: Registry name of the metric.
        scores: (B,) float64 scores on the CPU; NaN where the score is undefined (for example
            an image without a ground-truth box).
        curves: B x S curve values (insertion/deletion probabilities), or None.
        fractions: (S,) x positions of the curve points (fraction of pixels), or None.

    Example:
        >>> import torch
        >>> MetricResult("pointing_game", torch.tensor([1.0, float("nan"), 0.0])).mean()
        0.5
    """

    metric: str
    scores: torch.Tensor
    curves: torch.Tensor | None = None
    fractions: torch.Tensor | None = None

    def mean(self) -> float:
        """Mean over the images whose score is defined (NaN when none is)."""
        return nanmean(self.scores)


def nanmean(scores: torch.Tensor) -> float:
    """Mean of the non-NaN entries; NaN when there are none.

    Example:
        >>> import torch
        >>> nanmean(torch.tensor([1.0, float("nan"), 2.0])), nanmean(torch.tensor([float("nan")]))
        (1.5, nan)
    """
    valid = scores[~torch.isnan(scores)]
    return float(valid.mean()) if valid.numel() else math.nan


class Metric(Configurable, ABC):
    """Base class of evaluation metrics.

    A metric is configured by keyword arguments to ``__init__`` (validated there) and scores a
    batch with ``metric(model, x_batch, y_batch, a_batch, s_batch)``: the model (or adapter),
    B preprocessed images, B target classes, B saliency maps at any resolution (brought to
    the input size with :meth:`xvit.Explanation.upsample`), and for localisation metrics the
    ground truth. It returns a :class:`MetricResult` with one score per image; the names follow
    Quantus (``x_batch``, ``y_batch``, ``a_batch``, ``s_batch``). ``seeds`` (one int per image)
    fixes any random draw per image, so that scores do not depend on how images are batched.

    Attributes:
        name: Registry name.
        summary: One line for listings.
        paper: The paper that defines the metric.
        higher_is_better: Whether a larger score means a better explanation.
        needs_model: Whether the metric runs the model.
        needs_boxes: Whether the metric needs ground-truth boxes (``s_batch``).
        curve: Whether the score is the area under a curve: the result carries ``curves``
            and the metric has ``counts(height, width)``, the pixels changed at each point
            (the benchmark averages and plots the curves of such metrics).
        short_name: A short name for crowded figure cells (empty: the name).

    Example:
        >>> import torch
        >>> from xvit.metrics import Metric, MetricResult
        >>> class Peak(Metric):
        ...     name = "peak-example"
        ...     def __call__(self, model, x_batch, y_batch, a_batch, s_batch=None, *, seeds=None):
        ...         return MetricResult(self.name, a_batch.flatten(1).amax(dim=1).double())
        >>> maps = torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]]])
        >>> Peak()(None, torch.zeros(2, 3, 8, 8), [0, 1], maps).scores
        tensor([3., 2.], dtype=torch.float64)
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    needs_boxes: ClassVar[bool] = False
    curve: ClassVar[bool] = False
    short_name: ClassVar[str] = ""

    @abstractmethod
    def __call__(
        self,
        model: Any,
        x_batch: torch.Tensor,
        y_batch: Any,
        a_batch: torch.Tensor | Explanation,
        s_batch: Boxes | None = None,
        *,
        seeds: Sequence[int] | None = None,
    ) -> MetricResult:
        """Score a batch (see the class docstring)."""

    def footnote(self, input_size: tuple[int, int]) -> str:
        """A line for the foot of a results table (``""`` for none): a setting the scores
        depend on, as it applies to inputs of ``input_size`` (H, W)."""
        return ""

    @staticmethod
    def aggregate(scores: torch.Tensor) -> float:
        """One number for many per-image scores: the mean over the defined ones."""
        return nanmean(scores)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


#: Interpolation modes for bringing a saliency map to the input size.
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")


def saliency_at(
    a_batch: torch.Tensor | Explanation,
    size: tuple[int, int],
    mode: str = "nearest",
) -> torch.Tensor:
    """B x H x W float maps at ``size``, upsampled with :meth:`Explanation.upsample`.

    Raises:
        InvalidInputError: The maps are not B x h x w, or hold NaN or infinite values.
    """
    if mode not in UPSAMPLE_MODES:
        raise ParameterError(f"upsample must be 'nearest', 'bilinear' or 'bicubic', got {mode!r}")
    if isinstance(a_batch, Explanation):
        maps = a_batch.map
        explanation = a_batch
    else:
        if not isinstance(a_batch, torch.Tensor):
            raise InvalidInputError(
                f"a_batch must be a B x h x w tensor of saliency maps or an Explanation, got "
                f"{type(a_batch).__name__}"
            )
        maps = a_batch
        b = maps.shape[0] if maps.dim() else 0
        explanation = Explanation(
            map=maps,
            method="",
            targets=torch.zeros(b, dtype=torch.long),
            probabilities=torch.zeros(b),
            params={},
            input_size=size,
        )
    if maps.dim() != 3 or maps.shape[0] == 0:
        raise InvalidInputError(
            f"saliency maps must be B x h x w with B >= 1, got shape {tuple(maps.shape)}; add a "
            f"batch dimension with .unsqueeze(0) for one map"
        )
    if not torch.isfinite(maps).all():
        raise InvalidInputError("the saliency maps contain NaN or infinite values")
    return explanation.upsample(size, mode=mode)


def check_batch(x_batch: Any, a_batch: torch.Tensor | Explanation) -> None:
    """x_batch is B x C x H x W and there is one map per image."""
    if not isinstance(x_batch, torch.Tensor) or x_batch.dim() != 4:
        shape = tuple(x_batch.shape) if isinstance(x_batch, torch.Tensor) else type(x_batch)
        raise InvalidInputError(f"x_batch must be a preprocessed B x C x H x W tensor, got {shape}")
    maps = a_batch.map if isinstance(a_batch, Explanation) else a_batch
    if isinstance(maps, torch.Tensor) and maps.dim() >= 1 and maps.shape[0] != x_batch.shape[0]:
        raise InvalidInputError(
            f"got {maps.shape[0]} saliency maps for {x_batch.shape[0]} images; pass one map "
            f"per image"
        )


def check_seeds(seeds: Sequence[int] | None, batch: int, default: int) -> list[int]:
    """One integer seed per image (``default + i`` when none are given)."""
    if seeds is None:
        return [default + i for i in range(batch)]
    values = list(seeds)
    if len(values) != batch or any(isinstance(s, bool) or not isinstance(s, int) for s in values):
        raise ParameterError(f"seeds must be {batch} integers, one per image, got {seeds!r}")
    return values


def check_choice(name: str, value: Any, choices: Sequence[str], metric: str) -> str:
    """Validate a string option."""
    if value not in choices:
        raise ParameterError(
            f"{metric}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return str(value)
