"""Raw attention: the last block's CLS attention over the patches, averaged over heads."""

from __future__ import annotations

import torch

from .._targets import Target
from ..models._base import ModelAdapter
from ._attention import capture_attentions, fuse_heads, patch_map
from ._base import PASS_IMAGES, Explainer
from ._registration import register_method


@register_method
class RawAttention(Explainer):
    """Raw attention: the last block's attention from the CLS token to each patch.

    The last block's attention probabilities are averaged over heads and the CLS token's row
    (the first prefix token) is read over the patch tokens; other prefix tokens
    (distillation, registers) are left out. For a model with no prefix token (global average
    pooling) the mean over all token rows is used instead of a CLS row. The method takes no
    parameters.

    References:
        The attention-map baseline discussed in S. Abnar, W. Zuidema, "Quantifying Attention
        Flow in Transformers", ACL 2020, and reported by most ViT explainability papers.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> xvit.explain("attention", m, torch.randn(2, 3, 32, 32)).map.shape
        torch.Size([2, 4, 4])
    """

    name = "attention"
    summary = "the last block's CLS attention over the patches, averaged over heads"
    paper = "Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020 (baseline)"
    family = "attention"
    score_targets = True
    needs_attention = True
    images_per_pass = PASS_IMAGES

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        last = capture_attentions(adapter, inputs)[-1]
        return patch_map(fuse_heads(last, "mean"), adapter, inputs)
