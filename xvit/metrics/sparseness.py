"""Sparseness: the Gini index of the absolute map; a few strong pixels score near 1."""

from __future__ import annotations

from typing import ClassVar

import torch

from .._constraints import Spec
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency, saliency_at
from ._localisation import map_size
from ._registration import register_metric

#: Added to every normalised value before the Gini index, as Quantus does.
GINI_EPSILON = 1e-7


def max_scaled(maps: torch.Tensor) -> torch.Tensor:
    """B x N float64 absolute values, each map divided by its largest (a zero map stays 0).

    Example:
        >>> max_scaled(torch.tensor([[[-2.0, 1.0]], [[0.0, 0.0]]])).tolist()
        [[1.0, 0.5], [0.0, 0.0]]
    """
    flat = maps.reshape(maps.shape[0], -1).double().abs()
    peak = flat.amax(dim=1, keepdim=True)
    return torch.where(peak > 0, flat / peak.clamp_min(torch.finfo(torch.float64).tiny), flat)


def gini(maps: torch.Tensor) -> torch.Tensor:
    """(B,) float64 Gini index of each map's absolute values, as Quantus' ``Sparseness``.

    Example:
        >>> one_hot, flat = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
        >>> one_hot[0, 1, 2] = 5.0
        >>> round(float(gini(one_hot)), 4), round(float(gini(flat)), 4)  # (n - 1) / n and 0
        (0.9375, 0.0)
    """
    values = torch.sort(max_scaled(maps) + GINI_EPSILON, dim=1).values
    n = values.shape[1]
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=values.device)
    return ((2 * rank - n - 1) * values).sum(dim=1) / (n * values.sum(dim=1))


def sparseness(
    a_batch: Saliency, *, size: tuple[int, int] | None = None, upsample: str = "nearest"
) -> torch.Tensor:
    """Functional form of :class:`Sparseness`: the Gini index of each map at ``size``.

    Args:
        a_batch: B x h x w saliency maps (or an :class:`~xvit.Explanation`).
        size: (H, W) at which to score, the model's input size (default: the
            Explanation's input size, or the maps' own size).
        upsample: How maps reach ``size``.

    Returns:
        (B,) float64 tensor.

    Example:
        >>> import torch
        >>> from xvit.metrics.functional import sparseness
        >>> maps = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
        >>> sparseness(maps, size=(8, 8)).round(decimals=4).tolist()
        [0.75, 0.0]
    """
    return gini(saliency_at(a_batch, map_size(a_batch, size), upsample))


@register_metric
class Sparseness(Metric):
    """Sparseness (Chalasani et al., ICML 2020): the Gini index of the explanation.

    The map at input resolution is taken in absolute value, divided by its maximum, raised
    by 1e-7 and flattened; with the values sorted ascending, ``x_1 <= ... <= x_n``, the score
    is ``sum_i (2 i - n - 1) x_i / (n sum_i x_i)``: 0 for a uniform map, ``(n - 1) / n`` when
    one pixel holds everything. Higher is better (a sparser, more focused explanation). The
    same numbers as Quantus 0.6's ``Sparseness`` with its defaults, but normalised per map
    (Quantus divides by the maximum over the whole batch, so a score there depends, through
    the 1e-7, on the other images of the batch).

    A patch map upsampled with ``"nearest"`` on an input that its grid divides has the same
    Gini index at input resolution as on the patch grid: every patch value is repeated the
    same number of times, which scales the numerator and the denominator alike (the 1e-7
    included). So the score does not depend on whether a method returns its map at the grid
    or at the input size.

    Args:
        upsample: How maps reach input resolution (``"nearest"`` by default).

    References:
        P. Chalasani, J. Chen, A. R. Chowdhury, X. Wu, S. Jha, "Concise Explanations of
        Neural Networks using Adversarial Training", ICML 2020; Quantus' ``Sparseness``.

    Example:
        >>> import torch
        >>> from xvit.metrics import Sparseness
        >>> maps = torch.zeros(2, 4, 4)
        >>> maps[0, 0, 0] = 1.0  # everything in one patch
        >>> maps[1] = 1.0  # uniform
        >>> Sparseness()(None, torch.zeros(2, 3, 32, 32), None, maps).scores.round(decimals=4)
        tensor([0.9375, 0.0000], dtype=torch.float64)
    """

    name = "sparseness"
    short_name = "gini"
    summary = "Gini index of the absolute map: how concentrated the explanation is"
    paper = "Chalasani et al., Concise Explanations of Neural Networks, ICML 2020"
    higher_is_better = True
    cost = "No model call: one sort of the map's H x W values per image."
    parameter_constraints: ClassVar[dict[str, Spec]] = {"upsample": UPSAMPLE}

    def __init__(self, *, upsample: str = "nearest") -> None:
        self.upsample = upsample

    def score(self, batch: Batch) -> MetricResult:
        """The Gini index of each map of the batch."""
        return MetricResult(self.name, gini(batch.saliency).cpu())
