"""Adapter for timm's ``VisionTransformer`` family (ViT, DeiT, DeiT-distilled, registers)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, QKVSource, inherits, pair
from ._family import Family, FamilyAdapter, fused_attn_off, tensor_or_none
from ._guard import has_hooks
from ._labels import timm_class_names
from ._prenorm import PreNormBlock, PreNormViT
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, attached_preprocessing


def is_timm_vit(model: object) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (or a subclass), without importing
    timm."""
    return inherits(model, "timm", ("VisionTransformer",))


def _blocks(model: Any) -> list[nn.Module]:
    return list(getattr(model, "blocks", None) or [])


def _check(model: Any) -> None:
    for i, block in enumerate(_blocks(model)):
        attn = getattr(block, "attn", None)
        if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not hasattr(attn, "attn_drop"):
            raise UnsupportedModelError(
                f"block {i} of this timm VisionTransformer ({type(block).__name__}) has no "
                f"standard attention with a fused qkv projection; xvit supports timm's "
                f"Block/Attention (vit_*, deit_*) models"
            )


def _qkv(block: Any) -> QKVSource:
    return QKVSource(modules=(block.attn.qkv,), hidden_size=block.attn.qkv.out_features // 3)


def _pooling(model: Any) -> str:
    if getattr(model, "attn_pool", None) is not None:
        return "attention-pool"
    if type(model).__name__ == "VisionTransformerDistilled":
        return "prefix"  # CLS and distillation heads
    pool = getattr(model, "global_pool", "token")
    return {"token": "token", "avg": "mean"}.get(pool, "other")


def _logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):  # distilled training mode returns both heads
        out = (out[0] + out[1]) / 2
    return out  # type: ignore[no-any-return]


def _head(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The final norm, pooling and classifier (both heads' mean when distilled)."""
    out = model.forward_head(model.norm(tokens))
    if isinstance(out, (tuple, list)):
        out = (out[0] + out[1]) / 2
    return out  # type: ignore[no-any-return]


def timm_preprocessing(model: Any, size: tuple[int, int]) -> Preprocessing:
    """A timm model's attached preprocessing, else the one its ``pretrained_cfg`` names."""
    attached = attached_preprocessing(model)
    if attached is not None:
        return attached
    cfg: Any = getattr(model, "pretrained_cfg", None) or {}
    return Preprocessing(
        size=size,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def timm_in_chans(model: Any) -> int:
    pe = model.patch_embed
    return int(pe.proj.in_channels) if hasattr(pe, "proj") else 3


def _prefix_rows_logits(model: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The forward with a shortcut in the last block: when the classifier reads only the
    prefix tokens (``global_pool='token'``, distilled heads), the last block computes
    attention and MLP for those rows alone; keys and values still come from every token.
    Saves about (N - T) / N of one block; same logits up to float rounding. None when a
    subclass, training mode or a non-standard last block makes it inexact, or when a hook or
    a replaced ``forward`` sits where the shortcut would skip it or feed it other rows (the
    model itself, the last block and its parts, the final norm): the plain forward runs
    them as the user expects."""
    if not _prefix_only_head(model):
        return None
    if has_hooks([model, model.norm, *model.blocks[-1].modules()]):
        return None
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    blocks = list(model.blocks)
    for block in blocks[:-1]:
        h = block(h)
    h = _prefix_rows_of_block(blocks[-1], h, int(model.num_prefix_tokens))
    out = model.forward_head(model.norm(h))
    if isinstance(out, (tuple, list)):
        out = (out[0] + out[1]) / 2
    return out  # type: ignore[no-any-return]


def _prefix_only_head(m: Any) -> bool:
    if type(m).__name__ not in ("VisionTransformer", "VisionTransformerDistilled"):
        return False  # a subclass may change the forward
    if m.training or int(m.num_prefix_tokens) < 1 or getattr(m, "attn_pool", None) is not None:
        return False
    if type(m).__name__ == "VisionTransformer" and m.global_pool != "token":
        return False
    block = m.blocks[-1]
    return (
        type(block).__name__ == "Block"
        and type(block.attn).__name__ == "Attention"
        and getattr(block.attn, "gate", None) is None
        and not getattr(m, "grad_checkpointing", False)
    )


def _prenorm_block(i: int, block: Any) -> PreNormBlock:
    attn, mlp = block.attn, block.mlp
    plain = (
        type(block).__name__ == "Block"
        and type(attn).__name__ == "Attention"
        and type(mlp).__name__ == "Mlp"
        and isinstance(attn.qkv, nn.Linear)
        and isinstance(mlp.fc1, nn.Linear)
        and all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, mlp.norm))
    )
    if not plain:
        raise UnsupportedModelError(
            f"block {i} ({type(block).__name__}) is not timm's plain pre-norm Block (Attention "
            f"without q/k norms, Mlp with Linear layers), which the pre-norm parts describe"
        )
    return PreNormBlock(
        norm1=block.norm1,
        qkv=(attn.qkv,),
        num_heads=int(attn.num_heads),
        scale=float(attn.scale),
        proj=attn.proj,
        norm2=block.norm2,
        fc1=mlp.fc1,
        act=mlp.act,
        fc2=mlp.fc2,
        ls1=block.ls1,
        ls2=block.ls2,
    )


def _prenorm(model: Any) -> PreNormViT:
    """timm's VisionTransformer(Distilled) by its pre-norm parts: the head reads the CLS row
    (``global_pool='token'``), CLS and distillation rows (distilled), or the patch mean
    (``'avg'``, through ``fc_norm``)."""
    kind, pool = type(model).__name__, _pooling(model)
    if kind not in ("VisionTransformer", "VisionTransformerDistilled") or pool == "other":
        raise UnsupportedModelError(
            f"this timm {kind} (pooling {pool!r}) is not a plain VisionTransformer with a "
            f"token, distilled or average-pooled head"
        )
    if pool == "attention-pool" or not isinstance(model.head, nn.Linear):
        raise UnsupportedModelError(
            f"this timm {kind} has no Linear classifier on its tokens (attention pooling or "
            f"no head)"
        )
    blocks = tuple(_prenorm_block(i, b) for i, b in enumerate(_blocks(model)))
    common = dict(tokens=model.norm_pre, blocks=blocks, norm=model.norm)
    if pool == "prefix":
        return PreNormViT(readout="rows", heads=(model.head, model.head_dist), **common)
    if pool == "token":
        return PreNormViT(readout="rows", heads=(model.head,), head_norm=model.fc_norm, **common)
    return PreNormViT(
        readout="mean",
        heads=(model.head,),
        head_norm=model.fc_norm,
        mean_from=int(model.num_prefix_tokens),
        **common,
    )


TIMM_VIT = Family(
    name="timm",
    description=(
        "timm VisionTransformer (ViT, DeiT, DeiT-distilled, register tokens, any global_pool)"
    ),
    matches=is_timm_vit,
    blocks=_blocks,
    qkv=_qkv,
    attention=lambda block: AttentionSource(module=block.attn.attn_drop, extract=tensor_or_none),
    norm1=lambda block: block.norm1,
    num_heads=lambda model: int(model.blocks[0].attn.num_heads),
    prefix_tokens=lambda model: int(model.num_prefix_tokens),
    patch_size=lambda model: pair(model.patch_embed.patch_size),
    image_size=lambda model: pair(model.patch_embed.img_size),
    dynamic_size=lambda model: bool(getattr(model, "dynamic_img_size", False)),
    in_chans=timm_in_chans,
    pooling=_pooling,
    eager=lambda model: fused_attn_off(model, [b.attn for b in model.blocks]),
    logits=_logits,
    num_classes=lambda model: int(model.num_classes),
    preprocessing=lambda model: timm_preprocessing(model, pair(model.patch_embed.img_size)),
    class_names=timm_class_names,
    prefix_rows_logits=_prefix_rows_logits,
    check=_check,
    prenorm=_prenorm,
    head=_head,
    token_entry=lambda model: model.pos_drop,  # _pos_embed ends with it
    patch_embed=lambda model: model.patch_embed,
)


class TimmViTAdapter(FamilyAdapter):
    """timm ``VisionTransformer`` and subclasses (``VisionTransformerDistilled``).

    Reads the geometry from ``num_prefix_tokens`` and ``patch_embed``; captures q/k/v from
    each block's fused ``attn.qkv`` projection and attention probabilities from
    ``attn.attn_drop`` (with ``fused_attn`` switched off for the call). The declaration is
    :data:`TIMM_VIT`.

    Example:
        >>> import timm, xvit
        >>> m = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> adapter = xvit.get_adapter(m)
        >>> type(adapter).__name__, adapter.geometry.num_prefix_tokens, adapter.geometry.grid()
        ('TimmViTAdapter', 2, (4, 4))
    """

    family = TIMM_VIT
    priority = 100  # any subclass matches: adapters for narrower families go first


def _prefix_rows_of_block(block: Any, x: torch.Tensor, keep: int) -> torch.Tensor:
    """A timm ``Block`` computed for the first ``keep`` query rows only (B x keep x D)."""
    attn = block.attn
    y = block.norm1(x)
    b, n, _ = y.shape
    heads, width = attn.num_heads, attn.head_dim
    if type(attn.qkv) is nn.Linear:  # queries of the kept rows only: (N - keep) x D x D less
        w, bias = attn.qkv.weight, attn.qkv.bias
        d = attn.attn_dim  # the width of each of q, k and v in the fused weight
        q = F.linear(y[:, :keep], w[:d], None if bias is None else bias[:d])
        q = q.reshape(b, keep, heads, width).transpose(1, 2)
        kv = F.linear(y, w[d:], None if bias is None else bias[d:])
        k, v = kv.reshape(b, n, 2, heads, width).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        qkv = attn.qkv(y).reshape(b, n, 3, heads, width).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q[:, :, :keep]
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, keep, attn.attn_dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    h = x[:, :keep] + block.drop_path1(block.ls1(out))
    return h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
