"""Insertion AUC: reveal the most salient pixels first; a good map makes the probability rise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._base import MetricResult, Saliency
from ._causal import CausalMetric
from ._registration import register_metric


@register_metric
class Insertion(CausalMetric):
    """Insertion game (Petsiuk, Das, Saenko, RISE, BMVC 2018).

    Starts from the substrate (by default a Gaussian blur of the image) and reveals the image's
    pixels in decreasing order of saliency, one image row of pixels per step by default; the
    score is the area under the target probability against the fraction of pixels revealed,
    both ends included, by the trapezoidal rule. Higher is better. A group of pixels of equal
    saliency is never split (``ties="groups"``). The parameters are those of
    :class:`~xvit.metrics._causal.CausalMetric` (``protocol="rise"`` and
    ``protocol="gradmask"`` reproduce those authors' evaluation code).

    References:
        V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation of
        Black-box Models", BMVC 2018.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import Insertion
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = Insertion()(m, torch.randn(2, 3, 32, 32), [0, 1], torch.rand(2, 4, 4))
        >>> r.scores.shape, r.curves.shape  # 32 rows per image: 33 curve points
        (torch.Size([2]), torch.Size([2, 33]))
    """

    name = "insertion"
    short_name = "ins"
    summary = "area under the class probability as the most salient pixels are revealed"
    paper = "Petsiuk et al., RISE: Randomized Input Sampling for Explanation, BMVC 2018"
    cost = (
        "about one forward per curve point (input height + 1 points at the default step of "
        "one pixel row: 225 at 224 px), in batches of batch_size"
    )
    higher_is_better = True
    insertion = True
    default_substrate = "blur"


def insertion(
    model: Any,
    x_batch: torch.Tensor,
    y_batch: Any,
    a_batch: Saliency,
    *,
    seeds: Sequence[int] | None = None,
    **params: Any,
) -> MetricResult:
    """Functional form of :class:`Insertion`: ``Insertion(**params)(model, x, y, a, seeds=seeds)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import insertion
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> insertion(m, torch.randn(1, 3, 32, 32), 0, torch.rand(1, 4, 4),
        ...           protocol="gradmask").fractions.shape
        torch.Size([12])
    """
    return Insertion.create(**params)(model, x_batch, y_batch, a_batch, seeds=seeds)
