"""What Average Drop and Increase in Confidence share: the target's probability on the image
and on the image multiplied by its (min-max scaled) explanation map (Chattopadhay et al.,
Grad-CAM++, WACV 2018), as pytorch-grad-cam's ``CamMultImageConfidenceChange`` computes it.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import torch

from .._constraints import Spec
from .._errors import ModelOutputError
from .._forward import FORWARD_CONSTRAINTS, resolve_batch_size
from ..models import ModelAdapter
from ._base import UPSAMPLE, Batch, Metric, MetricResult

#: The parameters of both metrics: how maps reach the input, model inputs per forward.
CONFIDENCE_CONSTRAINTS: dict[str, Spec] = {
    "upsample": UPSAMPLE,
    "batch_size": FORWARD_CONSTRAINTS["batch_size"],
}


class ConfidenceChange(Metric):
    """The part Average Drop and Increase in Confidence share: parameters, cost, and the two
    confidences ``Y`` and ``O`` of each image (:func:`confidences`); a subclass turns them into
    its score (:meth:`from_confidences`)."""

    paper = "Chattopadhay et al., Grad-CAM++, WACV 2018"
    needs_model = True
    cost = "Two forward passes per image: the image and the image multiplied by its map."
    parameter_constraints: ClassVar[dict[str, Spec]] = CONFIDENCE_CONSTRAINTS

    def __init__(self, *, upsample: str = "nearest", batch_size: int | str = 64) -> None:
        self.upsample = upsample
        self.batch_size = batch_size

    def score(self, batch: Batch) -> MetricResult:
        """The score of each image from its confidences ``Y`` and ``O``."""
        assert batch.adapter is not None and batch.target is not None  # needs_model
        y, o = confidences(
            batch.adapter,
            batch.x,
            batch.target,
            batch.saliency,
            batch_size=self.batch_size,
            metric=self.name,
        )
        return MetricResult(self.name, self.from_confidences(y, o))

    @abstractmethod
    def from_confidences(self, y: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """(B,) float64 scores from ``Y`` (the image) and ``O`` (the image times its map;
        NaN for a constant map)."""


def unit_range(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each B x H x W map min-max scaled to [0, 1], and (B,) whether it could be (a constant
    map cannot; it comes back as zeros).

    Example:
        >>> scaled, ok = unit_range(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))
        >>> scaled.tolist(), ok.tolist()
        ([[[0.0, 1.0]], [[0.0, 0.0]]], [True, False])
    """
    flat = maps.reshape(maps.shape[0], -1).float()
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    ok = span.squeeze(1) > 0
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return scaled.view_as(maps), ok


def confidences(
    adapter: ModelAdapter,
    x: torch.Tensor,
    target: torch.Tensor,
    saliency: torch.Tensor,
    *,
    batch_size: int | str,
    metric: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) float64 softmax probabilities of the target: ``Y`` on the images and ``O`` on
    the images multiplied (in the model's input space) by their maps scaled to [0, 1]; ``O``
    is NaN for a constant map.

    Both batches go through the model together, ``batch_size`` inputs per forward.
    """
    b, c, h, w = x.shape
    scaled, ok = unit_range(saliency)
    masked = x * scaled.to(device=x.device, dtype=x.dtype).unsqueeze(1)
    inputs = torch.cat([x, masked])
    classes = torch.cat([target, target])
    chunk = resolve_batch_size(batch_size, adapter.device, c * h * w * x.element_size())
    probs = torch.empty(2 * b, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, 2 * b, chunk):
            part = slice(start, start + chunk)
            p = adapter.logits(inputs[part], check_finite=False).float().softmax(dim=-1)
            probs[part] = p.gather(1, classes[part].unsqueeze(1)).squeeze(1).double().cpu()
    if not torch.isfinite(probs).all():
        raise ModelOutputError(
            f"{metric}: the model returned NaN or infinite logits on the images or on the "
            f"images multiplied by their maps; check the model and the input"
        )
    y, o = probs[:b], probs[b:]
    return y, torch.where(ok.cpu(), o, torch.full_like(o, math.nan))
