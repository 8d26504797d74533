"""Energy-based Pointing Game: the share of saliency mass that falls inside the boxes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

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
from .pointing_game import _map_size

NORMALIZATIONS = ("minmax", "clamp", "none")


def _energy_maps(maps: torch.Tensor, normalize: str) -> torch.Tensor:
    flat = maps.double().flatten(1)
    if normalize == "minmax":
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        span = hi - lo
        flat = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1.0), 0.0)
    elif normalize == "clamp":
        flat = flat.clamp_min(0)
    return flat.view_as(maps)


def energy_pointing_game(
    a_batch: torch.Tensor | Explanation,
    s_batch: Boxes,
    *,
    size: tuple[int, int] | None = None,
    upsample: str = "nearest",
    normalize: str = "minmax",
) -> torch.Tensor:
    """Per-image share of saliency energy inside the ground-truth boxes, in [0, 1].

    Args:
        a_batch: B x h x w saliency maps (or an :class:`~xvit.Explanation`).
        s_batch: Per image a list of (x0, y0, x1, y1) boxes in input pixels, or a B x H x W
            boolean mask.
        size: (H, W) at which to score (default: the Explanation's input size, or the maps'
            own size).
        upsample: How maps reach ``size``.
        normalize: ``"minmax"`` (default, as Score-CAM, whose maps are min-max scaled before
            the game), ``"clamp"`` (negative values count as 0) or ``"none"``.

    Returns:
        (B,) float64; NaN for an image without a box, or whose map carries no energy (a
        constant map under min-max scaling, or a total that is not positive).

    Example:
        >>> import torch
        >>> from xvit.metrics import energy_pointing_game
        >>> m = torch.tensor([[[0.0, 1.0], [1.0, 2.0]]])
        >>> energy_pointing_game(m, [[(1, 1, 2, 2)]]).tolist()  # energies 0, .5, .5, 1
        [0.5]
    """
    normalize = check_choice("normalize", normalize, NORMALIZATIONS, "energy_pointing_game")
    h, w = _map_size(a_batch, size)
    maps = _energy_maps(saliency_at(a_batch, (h, w), upsample).cpu(), normalize)
    b = maps.shape[0]
    masks = box_masks(s_batch, (h, w), b).flatten(1)
    flat = maps.flatten(1)
    total = flat.sum(dim=1)
    inside = (flat * masks).sum(dim=1)
    defined = masks.any(dim=1) & (total > 0)
    share = inside / torch.where(total > 0, total, 1.0)
    return torch.where(defined, share, torch.full_like(share, math.nan))


@register_metric
class EnergyPointingGame(Metric):
    """Energy-based Pointing Game (Wang et al., Score-CAM, CVPR-W 2020).

    The map at input resolution is min-max scaled (by default) and the score is the sum of
    its values inside the union of the target's boxes divided by its total: the share of the
    explanation's energy that lies on the object. Higher is better. NaN for images without a
    box or maps without energy; the aggregate is the mean over the rest.

    Args:
        upsample: How maps reach input resolution (``"nearest"`` by default).
        normalize: ``"minmax"`` (default), ``"clamp"`` or ``"none"``.

    References:
        H. Wang, Z. Wang, M. Du, F. Yang, Z. Zhang, S. Ding, P. Mardziel, X. Hu, "Score-CAM:
        Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR-W 2020.

    Example:
        >>> import torch
        >>> from xvit.metrics import EnergyPointingGame
        >>> m = torch.tensor([[[0.0, 1.0], [0.0, 3.0]]])
        >>> x = torch.zeros(1, 3, 16, 16)
        >>> EnergyPointingGame()(None, x, [0], m, [[(8, 8, 16, 16)]]).scores.tolist()
        [0.75]
    """

    name = "energy_pointing_game"
    summary = "share of the (min-max scaled) saliency mass inside the ground-truth boxes"
    paper = "Wang et al., Score-CAM: Score-Weighted Visual Explanations for CNNs, CVPR-W 2020"
    higher_is_better = True
    needs_boxes = True

    def __init__(self, *, upsample: str = "nearest", normalize: str = "minmax") -> None:
        self.upsample = check_choice("upsample", upsample, UPSAMPLE_MODES, self.name)
        self.normalize = check_choice("normalize", normalize, NORMALIZATIONS, self.name)

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
        scores = energy_pointing_game(
            a_batch, s_batch, size=size, upsample=self.upsample, normalize=self.normalize
        )
        return MetricResult(self.name, scores)
