"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021): LRP relevance of every block's
attention, weighted by its gradient and accumulated through the blocks."""

from __future__ import annotations

from typing import ClassVar

import torch

from .._constraints import Integer, Real, Spec
from .._errors import InvalidInputError, ParameterError, UnsupportedModelError
from .._targets import Target, TargetScore, gradient_scores
from ..models._base import Geometry, ModelAdapter, check_finite_logits
from ..models._capture import Capture
from ..models._prenorm import PRENORM
from ._attention import patch_map
from ._base import PASS_IMAGES, Cost, Explainer
from ._lrp import forward, relprop
from ._registration import register_method

#: How far the rebuilt forward's logits may be from the model's (relative to the largest
#: logit) before the model is refused as not of the declared pre-norm shape.
LOGITS_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}


def rollout(cams: list[torch.Tensor]) -> torch.Tensor:
    """The authors' accumulation of B x N x N block matrices, first block first:
    ``R = (W_0 + I)``, then ``R = (W_l + I) @ R`` for each later block (rows not normalised).

    Example:
        >>> w = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
        >>> rollout([w, w])
        tensor([[[1., 2.],
                 [0., 1.]]])
    """
    n = cams[0].shape[-1]
    eye = torch.eye(n, dtype=cams[0].dtype, device=cams[0].device)
    joint = cams[0] + eye
    for cam in cams[1:]:
        joint = (cam + eye) @ joint
    return joint


@register_method
class CheferLRP(Explainer):
    """Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021), the authors' LRP method.

    The relevance of the target class (a one-hot vector on the logits) is propagated back
    through the classifier and every block by layer-wise relevance propagation with the
    authors' rules (alpha-beta rule for Linear layers with ``alpha``, beta = alpha - 1; the
    two attention products q k^T and A v split between their factors; residual sums
    renormalised; norms, activations and softmax passing relevance on). Each block's
    attention relevance R_l is weighted by the gradient of the target logit with respect to
    its attention probabilities, dA_l: Ā_l = mean over heads of ReLU(dA_l ⊙ R_l). From
    block ``start_layer`` on, the blocks are accumulated as ``R = (Ā_l + I) R`` and the map
    is the CLS row over the patch tokens (for a model without prefix tokens, the mean of
    all rows). Equal to ``LRP(model).generate_LRP(x, method="transformer_attribution")`` of
    the authors' code (hila-chefer/Transformer-Explainability) with their defaults
    (``alpha=1``, ``start_layer=0``), per image.

    The relevance rules follow the model layer by layer, so the method rebuilds the forward
    from the parts its family declares (a pre-norm block: norm, q/k/v, softmax attention,
    output Linear, residual; norm, Linear, activation, Linear, residual; the final norm and
    a Linear head) with the model's own modules and weights, and refuses a model whose
    rebuilt logits differ from its own. Families that declare the parts (adapter capability
    ``"prenorm"``): timm ``VisionTransformer`` (ViT, DeiT, DeiT-distilled, register tokens,
    token or average pooling, layer scale) and HuggingFace ViT/DeiT classifiers (with or
    without teacher, transformers 4.x and 5.x). Beyond the authors' ViT: layer scale passes
    relevance on as a norm does; two heads averaged (DeiT-distilled) share the relevance by
    the residual-sum rule, each then reading its own token row; an average-pooled head gives
    each pooled row its input-times-gradient share.

    With a score function as the target, the starting relevance is its gradient with respect
    to the logits (the one-hot vector for a logit) and dA_l its gradient.

    Args:
        alpha: The alpha of the alpha-beta rule of every Linear layer (beta = alpha - 1),
            at least 1. Default 1, as the authors' ``generate_LRP`` (positive
            contributions only).
        start_layer: The first block accumulated into the map (0 .. L-1). Default 0, as
            the authors' code: every block.

    References:
        H. Chefer, S. Gur, L. Wolf, "Transformer Interpretability Beyond Attention
        Visualization", CVPR 2021.

    Example:
        >>> import torch, xvit
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> xvit.explain("chefer_lrp", model, torch.randn(2, 3, 64, 64), target=1).map.shape
        torch.Size([2, 8, 8])
    """

    name = "chefer_lrp"
    summary = "LRP relevance of attention times its gradient, accumulated through all blocks"
    paper = (
        "Chefer, Gur & Wolf, Transformer Interpretability Beyond Attention Visualization, CVPR 2021"
    )
    family = "attention+gradient"
    score_targets = True
    needs_gradients = True
    images_per_pass = PASS_IMAGES
    needs_attention = False  # the attention is recomputed from the declared parts
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "alpha": Real(low=1),
        "start_layer": Integer(low=0),
    }

    def __init__(self, *, alpha: float = 1.0, start_layer: int = 0) -> None:
        self.alpha = alpha
        self.start_layer = start_layer

    @classmethod
    def capabilities_needed(cls) -> tuple[str, ...]:
        return (*super().capabilities_needed(), PRENORM)

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """The model's own forward (the tokens, and the logits the rebuilt forward must
        equal), then a gradient pass through the rebuilt blocks; the relevance pass back
        through them is not a pass through the model."""
        return Cost(forwards=1, gradient_passes=1)

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        parts = adapter.prenorm_parts()
        if self.start_layer >= len(parts.blocks):
            raise ParameterError(
                f"chefer_lrp: start_layer={self.start_layer}, but the model has "
                f"{len(parts.blocks)} blocks; use 0 .. {len(parts.blocks) - 1}"
            )
        with torch.no_grad(), Capture(adapter, layers={"tokens": parts.tokens}) as cap:
            own = adapter.logits(inputs)
            tokens = cap.layer("tokens").detach()
        with torch.enable_grad():
            traces = []

            def rebuilt(t: torch.Tensor) -> torch.Tensor:
                traces.append(forward(parts, t))
                return traces[-1].logits

            # the model's own modules run here: their faults are reported as the model's
            adapter.logits(tokens.requires_grad_(True), check_finite=False, forward=rebuilt)
            trace = traces[-1]
            check_finite_logits(trace.logits, "the images (chefer_lrp's rebuilt forward)")
            _check_same_logits(adapter, trace.logits, own)
            scores = gradient_scores(trace.logits, target)
            if isinstance(target, TargetScore) and not scores.requires_grad:
                raise InvalidInputError(
                    f"target score {target.name} is not differentiable in the logits: "
                    f"chefer_lrp starts from its gradient"
                )
            attns = [t.attn for t in trace.blocks[self.start_layer :]]
            r, *grads = torch.autograd.grad(scores.sum(), [trace.logits, *attns])
        with torch.no_grad():
            cams = relprop(parts, trace, r, self.alpha, self.start_layer)
            weighted = [(g * c).clamp(min=0).mean(dim=1) for g, c in zip(grads, cams, strict=True)]
            return patch_map(rollout(weighted), adapter, inputs).float()


def _check_same_logits(adapter: ModelAdapter, rebuilt: torch.Tensor, own: torch.Tensor) -> None:
    """Refuse a model whose forward the declared pre-norm parts do not rebuild."""
    tol = LOGITS_TOLERANCE.get(own.dtype, 1e-2) * max(1.0, float(own.abs().max()))
    gap = float((rebuilt.detach() - own).abs().max())
    if not gap <= tol:
        raise UnsupportedModelError(
            f"chefer_lrp rebuilds the forward of a {type(adapter.model).__name__} from the "
            f"pre-norm parts its {type(adapter).__name__} declares, but the rebuilt logits "
            f"differ from the model's by {gap:.3g}: its blocks are not the standard pre-norm "
            f"shape (a changed forward, hooks or extra layers); explain it with a method "
            f"that runs the model's own forward, e.g. gae"
        )
