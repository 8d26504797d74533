"""Complexity: the entropy of the normalised absolute map; a focused map scores low."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .._constraints import Spec
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency, saliency_at
from ._localisation import map_size
from ._registration import register_metric

#: Added inside the logarithm, as Quantus does, so that zero values contribute 0.
LOG_EPSILON = 1e-12


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """(B,) float64 entropy (nats) of each map's absolute values as a distribution; NaN for
    a map that is zero everywhere.

    Example:
        >>> uniform, one_hot = torch.ones(1, 2, 2), torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])
        >>> round(float(entropy(uniform)), 4) == round(math.log(4), 4)
        True
        >>> abs(float(entropy(one_hot))) < 1e-9
        True
    """
    values = maps.reshape(maps.shape[0], -1).double().abs()
    total = values.sum(dim=1, keepdim=True)
    p = values / total
    h = -(p * torch.log(p + LOG_EPSILON)).sum(dim=1)
    return torch.where(total.squeeze(1) > 0, h, torch.full_like(h, math.nan))


def complexity(
    a_batch: Saliency, *, size: tuple[int, int] | None = None, upsample: str = "nearest"
) -> torch.Tensor:
    """Functional form of :class:`Complexity`: the entropy of each map at ``size``.

    Args:
        a_batch: B x h x w saliency maps (or an :class:`~xvit.Explanation`).
        size: (H, W) at which to score, the model's input size (default: the
            Explanation's input size, or the maps' own size).
        upsample: How maps reach ``size``.

    Returns:
        (B,) float64 tensor (NaN for an all-zero map).

    Example:
        >>> import math, torch
        >>> from xvit.metrics.functional import complexity
        >>> maps = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
        >>> round(float(complexity(maps, size=(8, 8))), 4) == round(math.log(16), 4)
        True
    """
    return entropy(saliency_at(a_batch, map_size(a_batch, size), upsample))


@register_metric
class Complexity(Metric):
    """Complexity (Bhatt, Weller, Moura, IJCAI 2020): the entropy of the explanation.

    The map at input resolution is taken in absolute value and divided by its sum, which
    makes it a distribution ``p`` over the H x W pixels; the score is
    ``-sum_i p_i log(p_i + 1e-12)`` in nats: 0 when one pixel holds everything, ``log(H W)``
    for a uniform map. Lower is better (a simpler explanation). The same numbers as Quantus
    0.6's ``Complexity`` with its defaults (Quantus first divides by the maximum, which the
    division by the sum cancels). NaN for a map that is zero everywhere (no distribution).

    Unlike the Gini index of :class:`~xvit.metrics.Sparseness`, the entropy depends on the
    resolution: a patch map upsampled with ``"nearest"`` so that every patch covers ``k``
    pixels scores ``log k`` more at input resolution than on its grid. Every map is scored at
    the input size, so methods that return patch maps and methods that return pixel maps are
    compared on the same H x W pixels.

    Args:
        upsample: How maps reach input resolution (``"nearest"`` by default).

    References:
        U. Bhatt, A. Weller, J. M. F. Moura, "Evaluating and Aggregating Feature-based Model
        Explanations", IJCAI 2020; Quantus' ``Complexity``.

    Example:
        >>> import math, torch
        >>> from xvit.metrics import Complexity
        >>> maps = torch.zeros(2, 4, 4)
        >>> maps[0, 0, 0] = 1.0  # one patch of 8 x 8 pixels: log(64) nats
        >>> maps[1] = 1.0  # uniform over 32 x 32 pixels: log(1024) nats
        >>> s = Complexity()(None, torch.zeros(2, 3, 32, 32), None, maps).scores
        >>> torch.allclose(s, torch.tensor([math.log(64), math.log(1024)], dtype=torch.float64))
        True
    """

    name = "complexity"
    short_name = "entropy"
    summary = "entropy of the normalised absolute map: how spread out the explanation is"
    paper = "Bhatt et al., Evaluating and Aggregating Feature-based Model Explanations, IJCAI 2020"
    higher_is_better = False
    cost = "No model call: one pass over the map's H x W values per image."
    parameter_constraints: ClassVar[dict[str, Spec]] = {"upsample": UPSAMPLE}

    def __init__(self, *, upsample: str = "nearest") -> None:
        self.upsample = upsample

    def score(self, batch: Batch) -> MetricResult:
        """The entropy of each map of the batch."""
        return MetricResult(self.name, entropy(batch.saliency).cpu())
