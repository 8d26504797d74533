"""torchvision's ``VisionTransformer`` (``vit_b_16`` and friends) as a declared family.

Its blocks attend through ``nn.MultiheadAttention``, which projects q, k and v inside one
fused call (no module output holds them) and, as the blocks call it, never returns the
attention probabilities. For the duration of a capture, each block's attention module runs
:func:`eager_multihead_attention` instead of its own forward: the same primitive written out
(packed in-projection with the module's ``in_proj_weight``, softmax of the scaled scores, the
module's ``out_proj``), which returns the per-head probabilities with their gradients. The
model's own forward (embedding, blocks, norms, MLPs, head) runs unchanged; only torch's
attention primitive is spelled out, and each module's forward is back on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, QKVSource, inherits, model_lock, pair
from ._family import Family, FamilyAdapter, second_tensor
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, attached_preprocessing


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
def eager_path(model: nn.Module) -> Iterator[None]:
    """Every block's ``self_attention`` runs :func:`eager_multihead_attention` for the block;
    each module's own forward (or a forward the user set on it) is back on exit."""
    with model_lock(model):
        modules = [block.self_attention for block in _blocks(model)]
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


def _blocks(model: Any) -> list[Any]:
    return list(getattr(getattr(model, "encoder", None), "layers", None) or [])


def _qkv(block: Any) -> QKVSource:
    mha = block.self_attention
    return QKVSource(modules=(mha,), hidden_size=int(mha.embed_dim), weight=mha.in_proj_weight)


def _prefix(model: Any) -> int:
    grid = (model.image_size // model.patch_size) ** 2
    return int(model.seq_length - grid)


def _preprocessing(model: Any) -> Preprocessing:
    attached = attached_preprocessing(model)
    if attached is not None:
        return attached
    # torchvision's ImageClassification transform: resize 256, centre-crop 224, bilinear
    size = pair(model.image_size)
    return Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, "bilinear", crop_pct=224 / 256)


def _check(model: Any) -> None:
    for i, block in enumerate(_blocks(model)):
        if not isinstance(getattr(block, "self_attention", None), nn.MultiheadAttention):
            raise UnsupportedModelError(
                f"block {i} of this torchvision VisionTransformer has no nn.MultiheadAttention "
                f"self_attention; its structure was modified"
            )


TORCHVISION_VIT = Family(
    name="torchvision",
    description="torchvision VisionTransformer (vit_b_16, vit_l_32, ...)",
    matches=lambda model: inherits(model, "torchvision", ("VisionTransformer",)),
    blocks=_blocks,
    qkv=_qkv,
    attention=lambda block: AttentionSource(module=block.self_attention, extract=second_tensor),
    norm1=lambda block: block.ln_1,
    num_heads=lambda model: int(_blocks(model)[0].self_attention.num_heads),
    prefix_tokens=_prefix,
    patch_size=lambda model: pair(model.patch_size),
    image_size=lambda model: pair(model.image_size),
    pooling=lambda model: "token",  # heads(encoder.ln(x)[:, 0])
    eager=eager_path,
    qkv_on_eager_path=True,  # nn.MultiheadAttention projects inside one fused call
    logits=lambda model, x: model(x),
    num_classes=lambda model: int(model.num_classes),
    preprocessing=_preprocessing,
    check=_check,
)


class TorchvisionViTAdapter(FamilyAdapter):
    """torchvision ``VisionTransformer``; the declaration is :data:`TORCHVISION_VIT`.

    Example:
        >>> import xvit
        >>> from torchvision.models import VisionTransformer
        >>> m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
        ...                       hidden_dim=32, mlp_dim=64, num_classes=3)
        >>> adapter = xvit.get_adapter(m)
        >>> type(adapter).__name__, adapter.geometry.num_prefix_tokens, adapter.geometry.grid()
        ('TorchvisionViTAdapter', 1, (4, 4))
    """

    family = TORCHVISION_VIT
    priority = 100
