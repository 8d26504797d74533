"""Pointing Game: does the saliency maximum fall on (or near) the object?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import InvalidInputError, ParameterError
from ..explanation import Explanation
from ._base import (
    UPSAMPLE_MODES,
    Boxes,
    Metric,
    MetricResult,
    check_batch,
    check_choice,
    saliency_at,
)
from ._boxes import box_masks, require_boxes
from ._registration import register_metric

#: The Pointing Game's tolerance as its authors set it: 15 px on ImageNet inputs whose shorter
#: side is 224 px. By default xvit keeps that proportion on inputs of any size.
REFERENCE_TOLERANCE = 15.0
REFERENCE_SIDE = 224
TOLERANCE_RULE = (
    f"{REFERENCE_TOLERANCE:g} px per {REFERENCE_SIDE} px of the input's shorter side, as "
    f"Zhang et al. set it on ImageNet"
)


def default_tolerance(size: tuple[int, int]) -> float:
    """The default tolerance on inputs of ``size`` (H, W): 15 px per 224 px of the shorter side.

    Example:
        >>> default_tolerance((224, 224)), round(default_tolerance((64, 64)), 2)
        (15.0, 4.29)
    """
    return REFERENCE_TOLERANCE * min(int(size[0]), int(size[1])) / REFERENCE_SIDE


def check_tolerance(tolerance: Any) -> float | None:
    """``tolerance`` if it is None (the default rule) or a positive, finite number of pixels."""
    if tolerance is None:
        return None
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not (tolerance > 0 and math.isfinite(tolerance))
    ):
        raise ParameterError(
            f"pointing_game: tolerance must be a positive number of pixels (or None for "
            f"{TOLERANCE_RULE}), got {tolerance!r}"
        )
    return tolerance


def _map_size(a_batch: torch.Tensor | Explanation, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return int(size[0]), int(size[1])
    if isinstance(a_batch, Explanation):
        return a_batch.input_size
    if isinstance(a_batch, torch.Tensor) and a_batch.dim() == 3:
        return int(a_batch.shape[-2]), int(a_batch.shape[-1])
    raise InvalidInputError(
        f"saliency maps must be B x h x w, got {type(a_batch).__name__} "
        f"{tuple(a_batch.shape) if isinstance(a_batch, torch.Tensor) else ''}"
    )


def max_points(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of each map's maximum; the first maximum in raster order on ties."""
    w = maps.shape[-1]
    flat = maps.reshape(maps.shape[0], -1).argmax(dim=1)
    return flat // w, flat % w


def pointing_game(
    a_batch: torch.Tensor | Explanation,
    s_batch: Boxes,
    *,
    size: tuple[int, int] | None = None,
    tolerance: float | None = None,
    upsample: str = "nearest",
) -> torch.Tensor:
    """Per-image pointing-game hits: 1.0 (hit), 0.0 (miss) or NaN (no ground truth).

    Args:
        a_batch: B x h x w saliency maps (or an :class:`~xvit.Explanation`).
        s_batch: Per image a list of (x0, y0, x1, y1) boxes in input pixels, or a B x H x W
            boolean mask.
        size: (H, W) at which to play, the model's input size (default: the Explanation's
            input size, or the maps' own size).
        tolerance: A hit when a ground-truth pixel lies strictly closer than this many pixels
            to the maximum. None (default): 15 px per 224 px of the shorter side of ``size``
            (:func:`default_tolerance`; 4.3 px at 64 x 64).
        upsample: How maps reach ``size`` (``"nearest"`` keeps the patch grid).

    Returns:
        (B,) float64 tensor.

    Example:
        >>> import torch
        >>> from xvit.metrics import pointing_game
        >>> m = torch.zeros(2, 4, 4)
        >>> m[:, 3, 3] = 1.0  # maximum at pixel (row 3, col 3)
        >>> pointing_game(m, [[(3, 3, 4, 4)], [(0, 0, 1, 1)]], tolerance=1).tolist()
        [1.0, 0.0]
    """
    tolerance = check_tolerance(tolerance)
    h, w = _map_size(a_batch, size)
    if tolerance is None:
        tolerance = default_tolerance((h, w))
    maps = saliency_at(a_batch, (h, w), upsample).cpu()
    b = maps.shape[0]
    masks = box_masks(s_batch, (h, w), b)
    rows, cols = max_points(maps)
    dr = (torch.arange(h, dtype=torch.float64).view(1, h, 1) - rows.view(b, 1, 1)) ** 2
    dc = (torch.arange(w, dtype=torch.float64).view(1, 1, w) - cols.view(b, 1, 1)) ** 2
    near = (dr + dc) < float(tolerance) ** 2
    hits = (masks & near).flatten(1).any(dim=1).double()
    return torch.where(masks.flatten(1).any(dim=1), hits, torch.full_like(hits, math.nan))


@register_metric
class PointingGame(Metric):
    """Pointing Game (Zhang et al., 2018), as TorchRay implements it.

    The point is the first maximum (raster order) of the map at input resolution; it is a
    hit when a ground-truth pixel lies within ``tolerance`` pixels (strictly closer, in
    Euclidean distance) of it. An image without a box scores NaN (neither hit nor miss), and
    the accuracy is the mean over the images that have one. Higher is better.

    Args:
        tolerance: Pixels of tolerance at the model's input resolution. None (default): 15 px
            per 224 px of the input's shorter side, read from ``x_batch`` at each call (15 px
            at 224 x 224, 4.3 px on the 64 px digits); :meth:`tolerance_at` gives the value.
        upsample: How maps reach input resolution (``"nearest"`` by default).

    References:
        J. Zhang, S. A. Bargal, Z. Lin, J. Brandt, X. Shen, S. Sclaroff, "Top-down Neural
        Attention by Excitation Backprop", IJCV 2018; TorchRay's ``PointingGame``.

    Example:
        >>> import torch
        >>> from xvit.metrics import PointingGame
        >>> m = torch.zeros(1, 2, 2)
        >>> m[0, 0, 1] = 1.0  # the top-right patch
        >>> x = torch.zeros(1, 3, 32, 32)
        >>> PointingGame(tolerance=1)(None, x, [0], m, [[(16, 0, 32, 16)]]).scores.tolist()
        [1.0]
        >>> round(PointingGame().tolerance_at((32, 32)), 2)  # 15 px x 32 / 224
        2.14
    """

    name = "pointing_game"
    short_name = "pg"
    summary = "hit when the saliency maximum lies near a ground-truth box (15 px at 224 px)"
    paper = "Zhang et al., Top-down Neural Attention by Excitation Backprop, IJCV 2018"
    higher_is_better = True
    needs_boxes = True

    def __init__(self, *, tolerance: float | None = None, upsample: str = "nearest") -> None:
        self.tolerance = check_tolerance(tolerance)
        self.upsample = check_choice("upsample", upsample, UPSAMPLE_MODES, self.name)

    def tolerance_at(self, size: tuple[int, int]) -> float:
        """The tolerance in pixels on inputs of ``size`` (H, W)."""
        return default_tolerance(size) if self.tolerance is None else float(self.tolerance)

    def footnote(self, input_size: tuple[int, int]) -> str:
        """The tolerance used on inputs of ``input_size``, and where it comes from."""
        h, w = input_size
        how = TOLERANCE_RULE if self.tolerance is None else "set by the tolerance parameter"
        return (
            f"{self.name}: a hit within {self.tolerance_at(input_size):.1f} px of a box on the "
            f"{h} x {w} px input ({how})."
        )

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
        check_batch(x_batch, a_batch)
        s_batch = require_boxes(s_batch, self.name)
        size = (int(x_batch.shape[-2]), int(x_batch.shape[-1]))
        scores = pointing_game(
            a_batch, s_batch, size=size, tolerance=self.tolerance_at(size), upsample=self.upsample
        )
        return MetricResult(self.name, scores)
