"""Pointing Game: does the saliency maximum fall on (or near) the object?"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .._constraints import Literal, Real, Rule, Spec, check_param
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency
from ._boxes import Boxes
from ._localisation import maps_and_masks
from ._registration import register_metric

#: The Pointing Game's tolerance as its authors set it: 15 px on ImageNet inputs whose shorter
#: side is 224 px. By default xvit keeps that proportion on inputs of any size.
REFERENCE_TOLERANCE = 15.0
REFERENCE_SIDE = 224
TOLERANCE_RULE = (
    f"{REFERENCE_TOLERANCE:g} px per {REFERENCE_SIDE} px of the input's shorter side, as "
    f"Zhang et al. set it on ImageNet"
)

#: The constraint of ``tolerance``: pixels, or None for :data:`TOLERANCE_RULE`.
TOLERANCE = Rule(
    Real(low=0, low_open=True),
    Literal(None, TOLERANCE_RULE),
    note="a number is taken as pixels, whatever the input size",
)


def default_tolerance(size: tuple[int, int]) -> float:
    """The default tolerance on inputs of ``size`` (H, W): 15 px per 224 px of the shorter side.

    Example:
        >>> default_tolerance((224, 224)), round(default_tolerance((64, 64)), 2)
        (15.0, 4.29)
    """
    return REFERENCE_TOLERANCE * min(int(size[0]), int(size[1])) / REFERENCE_SIDE


def max_points(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of each map's maximum; the first maximum in raster order on ties."""
    w = maps.shape[-1]
    flat = maps.reshape(maps.shape[0], -1).argmax(dim=1)
    return flat // w, flat % w


def pointing_game(
    a_batch: Saliency,
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
        >>> from xvit.metrics.functional import pointing_game
        >>> m = torch.zeros(2, 4, 4)
        >>> m[:, 3, 3] = 1.0  # maximum at pixel (row 3, col 3)
        >>> pointing_game(m, [[(3, 3, 4, 4)], [(0, 0, 1, 1)]], tolerance=1).tolist()
        [1.0, 0.0]
    """
    tolerance = check_param("pointing_game", "tolerance", tolerance, TOLERANCE)
    maps, masks = maps_and_masks(a_batch, s_batch, size, upsample)
    if tolerance is None:
        tolerance = default_tolerance((maps.shape[-2], maps.shape[-1]))
    return hits(maps, masks, tolerance)


def hits(maps: torch.Tensor, masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(B,) float64: 1.0 where a mask pixel lies strictly closer than ``tolerance`` pixels to
    the map's first maximum, 0.0 where none does, NaN where the mask is empty.

    Example:
        >>> import torch
        >>> maps, masks = torch.eye(3).unsqueeze(0), torch.zeros(1, 3, 3, dtype=torch.bool)
        >>> masks[0, 0, 2] = True  # 2 px right of the maximum at (0, 0)
        >>> hits(maps, masks, 2.0).tolist(), hits(maps, masks, 2.5).tolist()
        ([0.0], [1.0])
    """
    b, h, w = maps.shape
    rows, cols = max_points(maps)
    dr = (torch.arange(h, dtype=torch.float64).view(1, h, 1) - rows.view(b, 1, 1)) ** 2
    dc = (torch.arange(w, dtype=torch.float64).view(1, 1, w) - cols.view(b, 1, 1)) ** 2
    near = (dr + dc) < float(tolerance) ** 2
    found = (masks & near).flatten(1).any(dim=1).double()
    return torch.where(masks.flatten(1).any(dim=1), found, torch.full_like(found, math.nan))


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
    cost = "no forward: the maps and the boxes only"
    higher_is_better = True
    needs_boxes = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "tolerance": TOLERANCE,
        "upsample": UPSAMPLE,
    }

    def __init__(self, *, tolerance: float | None = None, upsample: str = "nearest") -> None:
        self.tolerance = tolerance
        self.upsample = upsample

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

    def score(self, batch: Batch) -> MetricResult:
        """Hits of the batch's maps on its boxes at :meth:`tolerance_at` its input size."""
        assert batch.boxes is not None  # needs_boxes
        scores = hits(batch.saliency.cpu(), batch.boxes, self.tolerance_at(batch.size))
        return MetricResult(self.name, scores)
