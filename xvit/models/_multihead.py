"""``nn.MultiheadAttention`` on an eager path: torch's self-attention primitive written out,
so that q, k, v and the per-head probabilities exist as tensors during a capture.

Families whose blocks attend through ``nn.MultiheadAttention`` (torchvision's
``VisionTransformer``, open_clip's ``VisionTransformer``) enter :func:`multihead_eager` with
their blocks' attention modules: for the block, each module runs
:func:`eager_multihead_attention` instead of its own forward (packed in-projection with the
module's ``in_proj_weight``, softmax of the scaled scores, the module's ``out_proj``), and
returns the probabilities with their gradients; each module's own forward is back on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._base import model_lock


def eager_multihead_attention(mha: nn.MultiheadAttention) -> Callable[..., Any]:
    """A forward for ``mha`` that computes self-attention step by step and returns
    ``(output, probabilities B x heads x N x N)``; any call it does not cover (masks,
    separate key/value inputs or projections, sequence-first layout) goes to the module's
    own forward.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
        >>> x = torch.randn(1, 5, 8)
        >>> out, probs = eager_multihead_attention(mha)(x, x, x, need_weights=False)
        >>> torch.allclose(out, mha(x, x, x, need_weights=False)[0], atol=1e-6), probs.shape
        (True, torch.Size([1, 2, 5, 5]))
    """
    own = type(mha).forward

    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        covered = (
            query is key is value
            and query.dim() == 3
            and mha.batch_first
            and mha._qkv_same_embed_dim
            and mha.in_proj_weight is not None
            and mha.bias_k is None
            and not mha.add_zero_attn
            and key_padding_mask is None
            and attn_mask is None
            and not is_causal
        )
        if not covered:
            return own(  # type: ignore[no-any-return]
                mha,
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        b, n, e = query.shape
        heads = mha.num_heads
        qkv = F.linear(query, mha.in_proj_weight, mha.in_proj_bias)  # [q | k | v], B x N x 3E
        q, k, v = qkv.reshape(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
        scores = (q * (e // heads) ** -0.5) @ k.transpose(-2, -1)
        probs = F.dropout(scores.softmax(dim=-1), mha.dropout, training=mha.training)
        ctx = (probs @ v).transpose(1, 2).reshape(b, n, e)
        return F.linear(ctx, mha.out_proj.weight, mha.out_proj.bias), probs

    return forward


@contextmanager
def multihead_eager(model: nn.Module, modules: Sequence[nn.MultiheadAttention]) -> Iterator[None]:
    """Each of ``modules`` (attention modules of ``model``) runs
    :func:`eager_multihead_attention` for the block; each module's own forward (or a forward
    the user set on it) is back on exit."""
    with model_lock(model):
        saved = [vars(m).get("forward") for m in modules]
        try:
            for m in modules:
                m.forward = eager_multihead_attention(m)  # type: ignore[method-assign]
            yield
        finally:
            for m, old in zip(modules, saved):
                if old is None:
                    vars(m).pop("forward", None)
                else:
                    m.forward = old  # type: ignore[method-assign]
