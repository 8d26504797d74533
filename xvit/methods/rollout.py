"""Attention Rollout: attention propagated through every block, residual paths included."""

from __future__ import annotations

from typing import ClassVar

import torch

from .._constraints import Real, Rule, Spec
from .._targets import Target
from ..models._base import ModelAdapter
from ._attention import HEAD_FUSION, capture_attentions, fuse_heads, patch_map
from ._base import PASS_IMAGES, Explainer
from ._registration import register_method


def discard_lowest(fused: torch.Tensor, ratio: float, num_prefix_tokens: int) -> torch.Tensor:
    """Zero the lowest entries of each B x N x N fused attention matrix (a new tensor).

    Per image, the ``int(N * N * ratio)`` smallest entries of the whole matrix are chosen,
    equal values taken in row-major order (so tied tokens, such as a CLS and a distillation
    token with identical embeddings, give a deterministic result); each chosen entry is set
    to 0 unless it is a prefix token's self-attention (diagonal entry ``(t, t)`` with
    ``t < num_prefix_tokens``), which is always kept. So at most that many entries are
    zeroed; fewer when a prefix self-attention is among the lowest.
    """
    b, n, _ = fused.shape
    k = int(n * n * ratio)
    if k == 0:
        return fused.clone()
    flat = fused.reshape(b, n * n)
    lowest = flat.argsort(dim=-1, stable=True)[:, :k]  # ties: the earlier entry goes first
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    protected = torch.arange(num_prefix_tokens, device=fused.device) * (n + 1)
    drop[:, protected] = False
    return flat.masked_fill(drop, 0.0).reshape(b, n, n)


def add_residual(fused: torch.Tensor) -> torch.Tensor:
    """(A + I) with every row divided by its sum; equals 0.5 A + 0.5 I when rows of A sum to 1."""
    n = fused.shape[-1]
    eye = torch.eye(n, dtype=fused.dtype, device=fused.device)
    a = fused + eye
    return a / a.sum(dim=-1, keepdim=True)


@register_method
class AttentionRollout(Explainer):
    """Attention Rollout (Abnar & Zuidema, ACL 2020).

    For every block l the attention heads are fused into one N x N matrix A_l (element-wise
    mean by default, or max / min). Optionally the lowest entries are discarded: per image,
    the ``int(N * N * discard_ratio)`` smallest entries of the whole fused matrix are set to 0
    (the scope used by jacobgil/vit-explain, the reference implementation of this option;
    equal values are taken in row-major order), except that a prefix token's self-attention
    (CLS, distillation and register tokens, on the diagonal) is never dropped. The residual
    connection is then added and every row renormalised to sum 1:
    Â_l = (A_l + I) / rowsum(A_l + I), which is 0.5 A_l + 0.5 I when nothing is discarded
    and heads are averaged (rows of A_l sum to 1). Unlike the reference code, each image of
    a batch is discarded on its own and rows (not columns) are normalised. The rollout
    multiplies the blocks from the first to the last, R = Â_L ... Â_2 Â_1, with the rows and
    columns of all prefix tokens taking part. The map is the CLS row of R (the first prefix
    token) over the patch columns; the other prefix tokens are dropped only there. A model
    without prefix tokens (global average pooling) uses the mean of all rows of R instead.

    Args:
        head_fusion: How heads are combined: "mean" (default, as in the paper), "max" or
            "min".
        discard_ratio: Fraction in [0, 1) of each fused matrix's entries to zero before the
            residual is added. Default 0 (the paper's rollout, nothing discarded).

    References:
        S. Abnar, W. Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> e = xvit.explain("rollout", m, torch.randn(1, 3, 32, 32), head_fusion="max",
        ...                  discard_ratio=0.5)
        >>> e.map.shape
        torch.Size([1, 4, 4])
    """

    name = "rollout"
    summary = "attention multiplied through all blocks with the residual identity added"
    paper = "Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020"
    family = "attention"
    score_targets = True
    needs_attention = True
    images_per_pass = PASS_IMAGES
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "head_fusion": HEAD_FUSION,
        "discard_ratio": Rule(
            Real(0, 1, high_open=True),
            note="the fraction of each fused attention matrix's entries to zero; use 0 to keep "
            "every entry",
        ),
    }

    def __init__(self, *, head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio

    def rollout(self, attentions: list[torch.Tensor], num_prefix_tokens: int) -> torch.Tensor:
        """The B x N x N rollout of per-block B x heads x N x N attentions (first block first)."""
        result: torch.Tensor | None = None
        for attention in attentions:
            fused = fuse_heads(attention, self.head_fusion)
            if self.discard_ratio > 0:
                fused = discard_lowest(fused, self.discard_ratio, num_prefix_tokens)
            a = add_residual(fused)
            result = a if result is None else a @ result
        assert result is not None
        return result

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        prefix = adapter.geometry.num_prefix_tokens
        return patch_map(self.rollout(capture_attentions(adapter, inputs), prefix), adapter, inputs)
