"""Generic Attention-model Explainability (GAE): gradient-weighted attention relevance."""

from __future__ import annotations

import torch

from .._targets import Target
from ..models._base import ModelAdapter
from ._attention import attention_and_grads, patch_map
from ._base import PASS_IMAGES, Explainer
from ._registration import register_method


def relevance(attentions: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """The B x N x N relevance R: R = I, then R = R + mean_h(ReLU(dA * A)) @ R per block."""
    b, _, n, _ = attentions[0].shape
    r = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(b, n, n)
    for a, g in zip(attentions, grads, strict=True):
        weighted = (g * a).clamp_min(0).mean(dim=1)
        r = r + weighted @ r
    return r


@register_method
class GAE(Explainer):
    """Generic Attention-model Explainability (Chefer, Gur, Wolf, ICCV 2021).

    One forward and backward of the target class's logit (not the softmax; for a DeiT model
    with a distillation head, the mean of both heads' logits as the model reports it) gives
    every block's attention probabilities A_l (heads x N x N) and their gradients dA_l.
    Starting from R = I (N x N), each block from the first to the last updates
    R = R + Ā_l R with Ā_l = mean over heads of ReLU(dA_l ⊙ A_l). The map is the CLS row of R
    (the first prefix token) over the patch tokens; other prefix tokens (distillation,
    registers) take part in R and are dropped only there. A model without prefix tokens
    (global average pooling) uses the mean of all rows of R instead of a CLS row. Rows of R
    are not renormalised (the authors' ViT code does not either).

    With a score function as the target (see :func:`xvit.explain`), its score is
    backpropagated instead of the target logit.

    References:
        H. Chefer, S. Gur, L. Wolf, "Generic Attention-model Explainability for Interpreting
        Bi-Modal and Encoder-Decoder Transformers", ICCV 2021.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> xvit.explain("gae", m, torch.randn(2, 3, 32, 32), target=1).map.shape
        torch.Size([2, 4, 4])
    """

    name = "gae"
    summary = "attention weighted by its gradient (ReLU), accumulated through all blocks"
    paper = "Chefer, Gur & Wolf, Generic Attention-model Explainability, ICCV 2021"
    family = "attention+gradient"
    score_targets = True
    needs_gradients = True
    images_per_pass = PASS_IMAGES
    needs_attention = True

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        return patch_map(relevance(*attention_and_grads(adapter, inputs, target)), adapter, inputs)
