"""Positive and negative perturbation (Chefer et al., CVPR 2021): top-1 accuracy as the most
(or least) salient pixels are blacked out, 10 % to 90 % of them."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .._constraints import Literal, OneOf, Rule, Spec
from .._errors import InvalidInputError, ModelOutputError
from .._forward import FORWARD_CONSTRAINTS, resolve_batch_size
from ..models import ModelAdapter
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency
from ._registration import register_metric
from ._substrates import check_preprocessing, make_substrate

#: The fractions removed at the measured points (``perturbation_steps`` of the authors'
#: ``pertubation_eval_from_hdf5.py``); the curve adds 0 % (the image) and 100 % (accuracy 0).
STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: The spacing of the curve's points, over which the trapezoidal area is taken.
STEP_WIDTH = 0.1
ORDERS = ("positive", "negative")
UNITS = ("pixel", "patch")
#: What removed pixels become: the authors' black, or xvit's mean colour or image mean.
REMOVED = ("black", "zero", "mean")


def scaled_float32(scores: torch.Tensor) -> torch.Tensor:
    """B x N float32 scores on the CPU, each row min-max scaled as the authors store their
    maps (``(R - R.min()) / (R.max() - R.min())``); a constant row is left as it is.

    Example:
        >>> scaled_float32(torch.tensor([[2.0, 4.0, 3.0], [1.0, 1.0, 1.0]])).tolist()
        [[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]
    """
    flat = scores.detach().float().cpu()
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    return torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1.0), flat)


def removal_masks(ranking: torch.Tensor, negative: bool) -> torch.Tensor:
    """B x S x N boolean masks: at step ``s`` the ``int(N * STEPS[s])`` highest-ranked
    entries (the lowest for ``negative``), chosen by ``torch.topk`` of the float32 ranking
    (of its negation for ``negative``), one call per step, as the authors' code does.

    Example:
        >>> removal_masks(torch.arange(10.0).view(1, 10), False)[0, 1].nonzero().flatten()
        tensor([8, 9])
    """
    keys = -ranking if negative else ranking
    b, n = keys.shape
    masks = torch.zeros(b, len(STEPS), n, dtype=torch.bool)
    for s, fraction in enumerate(STEPS):
        chosen = torch.topk(keys, int(n * fraction), dim=-1).indices
        masks[:, s].scatter_(1, chosen, True)
    return masks


def top1_hits(
    adapter: ModelAdapter,
    x: torch.Tensor,
    target: torch.Tensor,
    removed: torch.Tensor,
    substrate: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """B x (S + 1) float64: 1.0 where the model's top-1 class is the target, on the image
    (column 0) and with the pixels of each of the S masks (B x S x H x W) replaced by the
    substrate; all (image, step) inputs in chunks of ``batch_size``."""
    b, s = removed.shape[:2]
    image = torch.arange(b).repeat_interleave(s + 1)
    step = torch.arange(s + 1).repeat(b)
    hits = torch.empty(b * (s + 1), dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, b * (s + 1), batch_size):
            im, st = image[start : start + batch_size], step[start : start + batch_size]
            mask = removed[im, (st - 1).clamp_min(0)] & (st > 0).view(-1, 1, 1)
            inputs = torch.where(mask.to(x.device).unsqueeze(1), substrate[im], x[im])
            logits = adapter.logits(inputs, check_finite=False)
            if not torch.isfinite(logits).all():
                raise ModelOutputError(
                    "token_perturbation: the model returned NaN or infinite logits on "
                    "perturbed inputs; check the model and the input"
                )
            top1 = logits.argmax(dim=-1).cpu()
            hits[start : start + len(im)] = (top1 == target[im].cpu()).double()
    return hits.view(b, s + 1)


@register_metric
class TokenPerturbation(Metric):
    """Positive and negative perturbation (Chefer, Gur, Wolf, CVPR 2021), as the authors'
    ``baselines/ViT/pertubation_eval_from_hdf5.py`` computes it.

    The map at input resolution (bilinear, as the authors upsample their patch maps) is
    min-max scaled in float32 and its pixels ranked; at 10 %, 20 %, ..., 90 % the
    ``int(f * H * W)`` top pixels (``torch.topk``, one call per step, which also decides
    among tied values) are set to black (0 in [0, 1] pixel space) in every channel, and the
    model's top-1 class on the result is compared with the target. ``order="positive"``
    removes the most salient pixels first: a faithful map makes the accuracy fall fast, so
    lower is better. ``order="negative"`` removes the least salient first (the authors
    negate the map): a faithful map keeps the accuracy, so higher is better. The score is
    the trapezoidal area under the per-image accuracy (0 or 1) at 0 %, 10 %, ..., 90 % and
    100 %: the unperturbed image first, accuracy 0 at 100 % (not measured), in steps of
    0.1, as the AUC script that accompanies the authors' numbers; its mean over images is
    that AUC (in [0, 1]; the paper prints percent).

    The target is ``y_batch``: the authors compare with the dataset's label (the
    explanations being of the predicted class); ``y_batch=None`` compares with the model's
    prediction on the clean image instead.

    Options that differ from the authors on purpose: ``unit="patch"`` removes whole patch
    tokens (the adapter's patch grid, ranked by the map's mean over each patch, the
    ``int(f * patches)`` top ones), ``substrate="zero"`` or ``"mean"`` fills removed pixels
    with the normalisation's mean colour or the image's own mean colour.

    Args:
        order: ``"positive"`` (most salient removed first; default) or ``"negative"``.
        unit: ``"pixel"`` (default, the authors) or ``"patch"``.
        substrate: ``"black"`` (default, the authors), ``"zero"`` or ``"mean"``.
        upsample: How maps reach input resolution; None: ``"bilinear"`` for pixels (the
            authors' ``interpolate(..., mode="bilinear")``), ``"nearest"`` for patches.
        batch_size: Model inputs per forward pass (10 per image), or "auto".

    References:
        H. Chefer, S. Gur, L. Wolf, "Transformer Interpretability Beyond Attention
        Visualization", CVPR 2021 (github.com/hila-chefer/Transformer-Explainability).

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import TokenPerturbation
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> x, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4)
        >>> pos = TokenPerturbation()(m, x, None, maps)
        >>> neg = TokenPerturbation(order="negative", unit="patch")
        >>> pos.scores.shape, TokenPerturbation().higher_is_better, neg.higher_is_better
        (torch.Size([2]), False, True)
    """

    name = "token_perturbation"
    short_name = "pert"
    summary = "area under top-1 accuracy as 10..90 % of the most (or least) salient pixels go"
    paper = "Chefer et al., Transformer Interpretability Beyond Attention Visualization, CVPR 2021"
    #: For the default ``order="positive"``; an instance with ``order="negative"`` has True.
    higher_is_better = False
    needs_model = True
    cost = "Ten forward passes per image: the image and 9 perturbed copies."
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "order": OneOf(*ORDERS),
        "unit": OneOf(*UNITS),
        "substrate": OneOf(*REMOVED),
        "upsample": Rule(UPSAMPLE, Literal(None, "bilinear for pixels, nearest for patches")),
        "batch_size": FORWARD_CONSTRAINTS["batch_size"],
    }

    def __init__(
        self,
        *,
        order: str = "positive",
        unit: str = "pixel",
        substrate: str = "black",
        upsample: str | None = None,
        batch_size: int | str = 64,
    ) -> None:
        self.order = order
        self.unit = unit
        self.substrate = substrate
        self.upsample = upsample or ("bilinear" if unit == "pixel" else "nearest")
        self.batch_size = batch_size
        # which way is better follows the order (the class states the default's)
        self.higher_is_better = order == "negative"  # type: ignore[misc]

    def footnote(self, input_size: tuple[int, int]) -> str:
        """The order, unit, substrate and upsampling behind the scores."""
        first = "most" if self.order == "positive" else "least"
        return (
            f"{self.name}: {self.order} order ({first} salient {self.unit}s removed first, "
            f"10..90 %, {self.substrate} substrate, maps upsampled {self.upsample}); area "
            f"under top-1 accuracy from 0 % to 100 % (see docs/metrics.md)."
        )

    def _ranking(
        self, saliency: torch.Tensor, adapter: ModelAdapter
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """B x N scores of the units to remove, and the (height, width) of a unit in pixels."""
        if self.unit == "pixel":
            return saliency.reshape(saliency.shape[0], -1), (1, 1)
        ph, pw = adapter.geometry.patch_size
        h, w = saliency.shape[-2:]
        if h % ph or w % pw:
            raise InvalidInputError(
                f"token_perturbation: unit='patch' needs an input that the {ph} x {pw} "
                f"patches tile, got {h} x {w}; use unit='pixel'"
            )
        pooled = F.avg_pool2d(saliency.unsqueeze(1).float(), (ph, pw))
        return pooled.flatten(1), (ph, pw)

    def score(self, batch: Batch) -> MetricResult:
        """The area under each image's top-1 accuracy curve."""
        adapter, target = batch.adapter, batch.target
        assert adapter is not None and target is not None  # needs_model
        x = batch.x
        b, c, h, w = x.shape
        if self.substrate == "black":
            check_preprocessing(adapter.preprocessing, c)
        ranking, (uh, uw) = self._ranking(batch.saliency, adapter)
        removed = removal_masks(scaled_float32(ranking), self.order == "negative")
        removed = removed.view(b, len(STEPS), h // uh, w // uw)
        removed = removed.repeat_interleave(uh, dim=2).repeat_interleave(uw, dim=3)
        substrate = make_substrate(
            self.substrate, x, adapter.preprocessing, blur_kernel=1, blur_sigma=1.0, seeds=()
        )
        chunk = resolve_batch_size(self.batch_size, adapter.device, c * h * w * x.element_size())
        hits = top1_hits(adapter, x, target, removed, substrate, chunk)
        curve = torch.cat([hits, torch.zeros(b, 1, dtype=torch.float64)], dim=1)
        return MetricResult(self.name, torch.trapezoid(curve, dx=STEP_WIDTH, dim=1))


def token_perturbation(
    model: Any, x_batch: torch.Tensor, y_batch: Any, a_batch: Saliency, **params: Any
) -> MetricResult:
    """Functional form of :class:`TokenPerturbation`.

    ``TokenPerturbation(**params)(model, x_batch, y_batch, a_batch)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import token_perturbation
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = token_perturbation(m, torch.randn(1, 3, 32, 32), 0, torch.rand(1, 4, 4),
        ...                        order="negative")
        >>> r.metric, r.scores.dtype
        ('token_perturbation', torch.float64)
    """
    return TokenPerturbation.create(**params)(model, x_batch, y_batch, a_batch)
