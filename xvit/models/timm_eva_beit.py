"""timm ``Eva`` (EVA-02, with fused or separate q/k/v and rotary embeddings) and ``Beit``
(relative position bias) as declared families.

Both add separate q and v biases to a fused ``qkv`` projection by calling ``F.linear`` with
its weight themselves, so the ``qkv`` module never runs: the declaration names the weight and
:class:`~xvit.models.Capture` records that call's output. EVA-02 base/large use separate
``q_proj``/``k_proj``/``v_proj`` Linears instead. Rotary embeddings and relative position bias
stay inside the model's own attention forward; with ``fused_attn`` off for the call, its eager
branch computes the probabilities (with rope and bias applied) and passes them through
``attn_drop``, where they are recorded.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from .._errors import UnsupportedModelError
from ._base import QKVSource, inherits
from ._family import Family, FamilyAdapter
from .timm_vit import TIMM_VIT


def _blocks(model: Any) -> list[nn.Module]:
    return list(getattr(model, "blocks", None) or [])


def _qkv(block: Any) -> QKVSource:
    attn = block.attn
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, nn.Linear):  # fused; with q/v biases it is only ever F.linear'd
        return QKVSource(modules=(qkv,), hidden_size=qkv.out_features // 3, weight=qkv.weight)
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    return QKVSource(modules=(q, k, v), hidden_size=int(q.out_features))


def _check(model: Any) -> None:
    for i, block in enumerate(_blocks(model)):
        attn = getattr(block, "attn", None)
        fused = isinstance(getattr(attn, "qkv", None), nn.Linear)
        separate = all(
            isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")
        )
        if not (fused or separate) or not hasattr(attn, "attn_drop"):
            raise UnsupportedModelError(
                f"block {i} of this timm {type(model).__name__} has no attention with a qkv or "
                f"q_proj/k_proj/v_proj projection and an attn_drop; its structure was modified"
            )


def _pooling(model: Any) -> str:
    if getattr(model, "attn_pool", None) is not None:
        return "attention-pool"
    pool = getattr(model, "global_pool", "avg")
    return {"token": "token", "avg": "mean"}.get(pool, "other")


def _family(name: str, classes: tuple[str, ...], description: str) -> Family:
    """timm's ViT declaration with what these models do differently: which classes match,
    how q/k/v are produced, how the head pools, and no last-block shortcut (their blocks
    apply rope or relative bias, which the shortcut's row-only block does not know)."""
    return replace(
        TIMM_VIT,
        name=name,
        description=description,
        matches=lambda model: inherits(model, "timm", classes),
        blocks=_blocks,
        qkv=_qkv,
        pooling=_pooling,
        logits=lambda model, x: model(x),
        prefix_rows_logits=lambda model, x: None,
        prenorm=None,  # other block shapes
        check=_check,
        token_entry=None,  # rope and relative bias need every token's place in the grid
        # after it: CLS/register tokens, positions (resampled by grid shape), eval-mode patch
        # dropout and norm_pre, each per token; rope and relative bias act inside the blocks
        patch_embed=lambda model: model.patch_embed,
    )


TIMM_EVA = _family(
    "timm-eva",
    ("Eva",),
    "timm Eva (EVA-02 and other Eva models: fused or separate qkv, rotary embeddings, "
    "register tokens)",
)
TIMM_BEIT = _family("timm-beit", ("Beit",), "timm Beit (BEiT, BEiT-v2: relative position bias)")


class TimmEvaAdapter(FamilyAdapter):
    """timm ``Eva``; the declaration is :data:`TIMM_EVA`.

    Example:
        >>> import timm, xvit
        >>> m = timm.create_model("eva02_tiny_patch14_224", num_classes=3, img_size=32,
        ...                       patch_size=8, embed_dim=32, depth=2, num_heads=2,
        ...                       ref_feat_shape=(4, 4))
        >>> adapter = xvit.get_adapter(m)
        >>> type(adapter).__name__, adapter.geometry.grid(), adapter.pooling
        ('TimmEvaAdapter', (4, 4), 'mean')
    """

    family = TIMM_EVA
    priority = 100


class TimmBeitAdapter(FamilyAdapter):
    """timm ``Beit``; the declaration is :data:`TIMM_BEIT`.

    Example:
        >>> import timm, xvit
        >>> m = timm.create_model("beitv2_base_patch16_224", num_classes=3, img_size=32,
        ...                       patch_size=8, embed_dim=32, depth=2, num_heads=2)
        >>> adapter = xvit.get_adapter(m)
        >>> type(adapter).__name__, adapter.geometry.num_prefix_tokens, adapter.pooling
        ('TimmBeitAdapter', 1, 'mean')
    """

    family = TIMM_BEIT
    priority = 100
