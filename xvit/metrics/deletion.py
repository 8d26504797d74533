"""Deletion AUC: remove the most salient pixels first; a good map makes the probability drop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._base import MetricResult, Saliency
from ._causal import CausalMetric
from ._registration import register_metric


@register_metric
class Deletion(CausalMetric):
    """Deletion game (Petsiuk, Das, Saenko, RISE, BMVC 2018).

    Starts from the image and replaces its pixels by the substrate (by default ``"zero"``, the
    normalisation mean colour) in decreasing order of saliency, one image row of pixels per
    step by default; the score is the area under the target probability against the fraction
    of pixels removed, both ends included, by the trapezoidal rule. Lower is better. A group of
    pixels of equal saliency is never split (``ties="groups"``). The parameters are those of
    :class:`~xvit.metrics._causal.CausalMetric`.

    References:
        V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation of
        Black-box Models", BMVC 2018.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import Deletion
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = Deletion(substrate="black")(m, torch.randn(1, 3, 32, 32), 2, torch.rand(1, 4, 4))
        >>> bool(0 <= r.scores[0] <= 1), Deletion.higher_is_better
        (True, False)
    """

    name = "deletion"
    short_name = "del"
    summary = "area under the class probability as the most salient pixels are removed"
    paper = "Petsiuk et al., RISE: Randomized Input Sampling for Explanation, BMVC 2018"
    cost = (
        "about one forward per curve point (input height + 1 points at the default step of "
        "one pixel row: 225 at 224 px), in batches of batch_size"
    )
    higher_is_better = False
    insertion = False
    default_substrate = "zero"


def deletion(
    model: Any,
    x_batch: torch.Tensor,
    y_batch: Any,
    a_batch: Saliency,
    *,
    seeds: Sequence[int] | None = None,
    **params: Any,
) -> MetricResult:
    """Functional form of :class:`Deletion`: ``Deletion(**params)(model, x, y, a, seeds=seeds)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import deletion
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> deletion(m, torch.randn(1, 3, 32, 32), 0, torch.rand(1, 4, 4), step=64).curves.shape
        torch.Size([1, 17])
    """
    return Deletion.create(**params)(model, x_batch, y_batch, a_batch, seeds=seeds)
