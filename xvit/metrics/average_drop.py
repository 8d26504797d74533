"""Average Drop: how much of the target's probability the explanation alone loses."""

from __future__ import annotations

from typing import Any

import torch

from ._base import MetricResult, Saliency
from ._confidence import ConfidenceChange
from ._registration import register_metric


@register_metric
class AverageDrop(ConfidenceChange):
    """Average Drop (Chattopadhay et al., Grad-CAM++, WACV 2018).

    The map at input resolution is min-max scaled to [0, 1] and multiplies the image in the
    model's input space (a pixel the map gives 0 becomes 0 there, the normalisation's mean
    colour), as pytorch-grad-cam's ``CamMultImageConfidenceChange`` does. With ``Y`` the
    softmax probability of the target on the image and ``O`` on the multiplied image, the
    score is ``max(0, Y - O) / Y``: the share of the confidence lost when only what the map
    highlights is kept. Lower is better; the paper reports the mean in percent, xvit as a
    fraction in [0, 1]. Its companion :class:`~xvit.metrics.IncreaseInConfidence` scores
    ``O > Y`` on the same images. NaN for a constant map (it cannot be scaled to [0, 1]).

    pytorch-grad-cam's ``DropInConfidence`` returns ``max(0, Y - O)`` without the division by
    ``Y``, and scales maps with ``(m - min) / (1e-7 + max - min)``, which shrinks maps of a
    small range (xvit divides by the range alone).

    Args:
        upsample: How maps reach input resolution (``"nearest"`` by default).
        batch_size: Model inputs per forward pass (each image counts twice: as it is and
            multiplied by its map), or "auto".

    References:
        A. Chattopadhay, A. Sarkar, P. Howlader, V. N. Balasubramanian, "Grad-CAM++:
        Generalized Gradient-based Visual Explanations for Deep Convolutional Networks",
        WACV 2018.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import AverageDrop
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = AverageDrop()(m, torch.randn(2, 3, 32, 32), [0, 1], torch.rand(2, 4, 4))
        >>> bool(((r.scores >= 0) & (r.scores <= 1)).all()), AverageDrop.higher_is_better
        (True, False)
    """

    name = "average_drop"
    short_name = "drop"
    summary = "share of the target probability lost on the image multiplied by its map"
    higher_is_better = False

    def from_confidences(self, y: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """``max(0, Y - O) / Y`` for each image of the batch."""
        return (y - o).clamp_min(0) / y


def average_drop(
    model: Any, x_batch: torch.Tensor, y_batch: Any, a_batch: Saliency, **params: Any
) -> MetricResult:
    """Functional form of :class:`AverageDrop`: ``AverageDrop(**params)(model, x, y, a)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import average_drop
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> average_drop(m, torch.randn(1, 3, 32, 32), 0, torch.rand(1, 4, 4)).scores.shape
        torch.Size([1])
    """
    return AverageDrop.create(**params)(model, x_batch, y_batch, a_batch)
