"""Increase in Confidence: does the explanation alone make the model more confident?"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._base import MetricResult, Saliency
from ._confidence import ConfidenceChange
from ._registration import register_metric


@register_metric
class IncreaseInConfidence(ConfidenceChange):
    """Increase in Confidence (Chattopadhay et al., Grad-CAM++, WACV 2018).

    The companion of :class:`~xvit.metrics.AverageDrop`, on the same multiplied images: 1.0
    for an image whose target probability rises when the image is multiplied by its map
    scaled to [0, 1] (``O > Y``), else 0.0; the mean is the rate of such images (the paper
    reports it in percent). Higher is better. NaN for a constant map. The same numbers as
    pytorch-grad-cam's ``IncreaseInConfidence`` with softmax targets (up to its
    ``1e-7`` in the scaling).

    Args:
        upsample: How maps reach input resolution (``"nearest"`` by default).
        batch_size: Model inputs per forward pass (each image counts twice), or "auto".

    References:
        A. Chattopadhay, A. Sarkar, P. Howlader, V. N. Balasubramanian, "Grad-CAM++:
        Generalized Gradient-based Visual Explanations for Deep Convolutional Networks",
        WACV 2018.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import IncreaseInConfidence
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = IncreaseInConfidence()(m, torch.randn(2, 3, 32, 32), [0, 1], torch.rand(2, 4, 4))
        >>> set(r.scores.tolist()) <= {0.0, 1.0}
        True
    """

    name = "increase_in_confidence"
    short_name = "incr"
    summary = "whether the target probability rises on the image multiplied by its map"
    higher_is_better = True

    def from_confidences(self, y: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """1.0 where ``O > Y``, else 0.0 (NaN for a constant map)."""
        rose = (o > y).double()
        return torch.where(o.isnan(), math.nan, rose)


def increase_in_confidence(
    model: Any, x_batch: torch.Tensor, y_batch: Any, a_batch: Saliency, **params: Any
) -> MetricResult:
    """Functional form of :class:`IncreaseInConfidence`.

    ``IncreaseInConfidence(**params)(model, x_batch, y_batch, a_batch)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import increase_in_confidence
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> increase_in_confidence(m, torch.randn(1, 3, 32, 32), 0, torch.rand(1, 4, 4)).metric
        'increase_in_confidence'
    """
    return IncreaseInConfidence.create(**params)(model, x_batch, y_batch, a_batch)
