"""Raw attention: the last block's CLS attention over the patches, averaged over heads.

This module also holds the small helpers the attention-based methods share (``rollout``,
``gae``): capturing every block's attention probabilities, fusing heads, and reading a
token row over the patch grid.
"""

from __future__ import annotations

from typing import Any

import torch

from .._errors import CaptureError, ParameterError
from ..models._base import ModelAdapter
from ..models._capture import Capture
from ._base import Explainer
from ._registration import register_method

#: The ways attention heads can be combined into one N x N matrix per block.
HEAD_FUSIONS = ("mean", "max", "min")


def check_head_fusion(value: Any, method: str) -> str:
    """Validate a ``head_fusion`` parameter ("mean", "max" or "min")."""
    if not isinstance(value, str) or value not in HEAD_FUSIONS:
        raise ParameterError(
            f"{method}: head_fusion must be one of {', '.join(map(repr, HEAD_FUSIONS))}, "
            f"got {value!r}"
        )
    return value


def fuse_heads(attention: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Combine B x heads x N x N attention into B x N x N by an element-wise mean, max or min."""
    if how == "mean":
        return attention.mean(dim=1)
    if how == "max":
        return attention.amax(dim=1)
    if how == "min":
        return attention.amin(dim=1)
    raise ParameterError(f"unknown head fusion {how!r}; use one of {', '.join(HEAD_FUSIONS)}")


def patch_row(matrix: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The explaining row of B x N x N token matrices, restricted to the patch columns (B x P).

    With prefix tokens this is the first prefix token's row (CLS). A model with no prefix
    token (global average pooling) has no CLS row; its logits read every token equally, so
    the mean over all token rows is used instead.
    """
    row = matrix[:, 0] if num_prefix_tokens > 0 else matrix.mean(dim=1)
    return row[:, num_prefix_tokens:]


def to_grid(scores: torch.Tensor, adapter: ModelAdapter, inputs: torch.Tensor) -> torch.Tensor:
    """B x P patch scores as B x h x w maps on the model's patch grid for ``inputs``."""
    gh, gw = adapter.geometry.grid(int(inputs.shape[-2]), int(inputs.shape[-1]))
    if scores.shape[-1] != gh * gw:
        raise CaptureError(
            f"the attention has {scores.shape[-1]} patch tokens but the input makes a "
            f"{gh} x {gw} grid; the model's token layout does not match its adapter"
        )
    return scores.reshape(scores.shape[0], gh, gw)


def capture_attentions(adapter: ModelAdapter, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Every block's attention probabilities (B x heads x N x N, first block first), float32.

    Runs one forward without gradients on the model's eager attention path; the model's
    attention settings are restored afterwards, also when the forward raises.
    """
    with torch.no_grad(), Capture(adapter, attention=True) as cap:
        adapter.logits(inputs)
        attentions = cap.attentions()
    return [a.detach().float() for a in attentions]


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
    needs_attention = True

    def __init__(self) -> None:
        pass

    def attribute(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        last = capture_attentions(adapter, inputs)[-1]
        scores = patch_row(fuse_heads(last, "mean"), adapter.geometry.num_prefix_tokens)
        return to_grid(scores, adapter, inputs)
