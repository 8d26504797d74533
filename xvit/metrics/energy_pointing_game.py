"""Energy-based Pointing Game: the share of saliency mass that falls inside the boxes."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from .._constraints import Literal, OneOf, Rule, Satisfies, Spec, check_param
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency
from ._boxes import Boxes
from ._localisation import maps_and_masks
from ._registration import register_metric

NORMALIZATIONS = ("minmax", "clamp", "abs", "none")
#: Presets: (upsample, normalize, max_box_fraction). "tis" is Transformer Input Sampling's
#: metrics/pointing_game.py (EnergyBasedPointingGame, max_overlap=0.5; maps resized with
#: torchvision's bilinear Resize; energy of |saliency|).
EPG_PROTOCOLS: dict[str, tuple[str, str, float | None]] = {
    "xvit": ("nearest", "minmax", None),
    "tis": ("bilinear", "abs", 0.5),
}

NORMALIZE = OneOf(*NORMALIZATIONS)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


#: A share of the input (positive; ``math.inf`` switches the large-box rule off).
BOX_FRACTION = Satisfies(
    _positive, "a positive number (a share of the input; math.inf for no limit)", float
)
#: None, where the preset of a protocol decides.
PRESET = Literal(None, "the protocol's")


def _energy_maps(maps: torch.Tensor, normalize: str) -> torch.Tensor:
    flat = maps.double().flatten(1)
    if normalize == "minmax":
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        span = hi - lo
        flat = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1.0), 0.0)
    elif normalize == "clamp":
        flat = flat.clamp_min(0)
    elif normalize == "abs":
        flat = flat.abs()
    return flat.view_as(maps)


def energy_pointing_game(
    a_batch: Saliency,
    s_batch: Boxes,
    *,
    size: tuple[int, int] | None = None,
    upsample: str = "nearest",
    normalize: str = "minmax",
    max_box_fraction: float | None = None,
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
            the game), ``"clamp"`` (negative values count as 0), ``"abs"`` (absolute
            values, as TIS) or ``"none"``.
        max_box_fraction: TIS's large-box rule: NaN for an image whose boxes cover at least
            this fraction of the input (TIS: 0.5); None (default) scores every image.
            ``EnergyPointingGame(protocol="tis")`` sets it.

    Returns:
        (B,) float64; NaN for an image without a box, whose map carries no energy (a
        constant map under min-max scaling, or a total that is not positive), or whose
        boxes are too large under ``max_box_fraction``.

    Example:
        >>> import torch
        >>> from xvit.metrics.functional import energy_pointing_game
        >>> m = torch.tensor([[[0.0, 1.0], [1.0, 2.0]]])
        >>> energy_pointing_game(m, [[(1, 1, 2, 2)]]).tolist()  # energies 0, .5, .5, 1
        [0.5]
    """
    normalize = check_param("energy_pointing_game", "normalize", normalize, NORMALIZE)
    max_box_fraction = check_param(
        "energy_pointing_game",
        "max_box_fraction",
        max_box_fraction,
        Rule(BOX_FRACTION, Literal(None, "every image scored")),
    )
    maps, masks = maps_and_masks(a_batch, s_batch, size, upsample)
    return energy_shares(maps, masks, normalize, max_box_fraction)


def energy_shares(
    maps: torch.Tensor, masks: torch.Tensor, normalize: str, max_box_fraction: float | None
) -> torch.Tensor:
    """(B,) float64 share of each map's energy (``normalize``-d) inside its mask; NaN where
    the mask is empty, the energy is not positive, or the mask covers at least
    ``max_box_fraction`` of the input.

    Example:
        >>> import torch
        >>> maps, masks = torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[False, True]]])
        >>> energy_shares(maps, masks, "none", None).tolist()
        [0.75]
    """
    flat = _energy_maps(maps, normalize).flatten(1)
    masks = masks.flatten(1)
    total = flat.sum(dim=1)
    inside = (flat * masks).sum(dim=1)
    defined = masks.any(dim=1) & (total > 0)
    if max_box_fraction is not None:
        defined &= masks.double().mean(dim=1) < max_box_fraction
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
        protocol: ``"xvit"`` (default: nearest upsampling, min-max scaling, every box
            scored) or ``"tis"`` (Transformer Input Sampling's evaluation: bilinear
            upsampling, energy of the absolute values, NaN for boxes covering >= 50 % of
            the image). The options below left at None take the protocol's value.
        upsample: How maps reach input resolution.
        normalize: ``"minmax"``, ``"clamp"``, ``"abs"`` or ``"none"``.
        max_box_fraction: NaN for images whose boxes cover at least this fraction of the
            input (None: the protocol's; ``math.inf`` switches the rule off).

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
    cost = "no forward: the maps and the boxes only"
    higher_is_better = True
    needs_boxes = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "protocol": OneOf(*EPG_PROTOCOLS),
        "upsample": (UPSAMPLE, PRESET),
        "normalize": (NORMALIZE, PRESET),
        "max_box_fraction": (BOX_FRACTION, PRESET),
    }

    def __init__(
        self,
        *,
        protocol: str = "xvit",
        upsample: str | None = None,
        normalize: str | None = None,
        max_box_fraction: float | None = None,
    ) -> None:
        self.protocol = protocol
        preset_upsample, preset_normalize, preset_fraction = EPG_PROTOCOLS[protocol]
        self.upsample = preset_upsample if upsample is None else upsample
        self.normalize = preset_normalize if normalize is None else normalize
        self.max_box_fraction = preset_fraction if max_box_fraction is None else max_box_fraction

    def score(self, batch: Batch) -> MetricResult:
        """The energy shares of the batch's maps inside its boxes."""
        assert batch.boxes is not None  # needs_boxes
        scores = energy_shares(
            batch.saliency.cpu(), batch.boxes, self.normalize, self.max_box_fraction
        )
        return MetricResult(self.name, scores)
