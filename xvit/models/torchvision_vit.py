"""torchvision's ``VisionTransformer`` (``vit_b_16`` and friends) as a declared family.

Its blocks attend through ``nn.MultiheadAttention``, which projects q, k and v inside one
fused call (no module output holds them) and, as the blocks call it, never returns the
attention probabilities. For the duration of a capture, each block's attention module runs
:func:`~xvit.models._multihead.eager_multihead_attention` instead of its own forward: the
same primitive written out (packed in-projection with the module's ``in_proj_weight``,
softmax of the scaled scores, the module's ``out_proj``), which returns the per-head
probabilities with their gradients. The
model's own forward (embedding, blocks, norms, MLPs, head) runs unchanged; only torch's
attention primitive is spelled out, and each module's forward is back on exit.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, QKVSource, inherits, pair
from ._family import Family, FamilyAdapter, child, second_tensor
from ._multihead import eager_multihead_attention, multihead_eager
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, attached_preprocessing

__all__ = ["TORCHVISION_VIT", "TorchvisionViTAdapter", "eager_multihead_attention", "eager_path"]


def eager_path(model: nn.Module) -> AbstractContextManager[None]:
    """Every block's ``self_attention`` runs :func:`eager_multihead_attention` for the block
    (:func:`~xvit.models._multihead.multihead_eager`)."""
    return multihead_eager(model, [block.self_attention for block in _blocks(model)])


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
    head=lambda model, tokens: model.heads(model.encoder.ln(tokens)[:, 0]),
    token_entry=lambda model: model.encoder.dropout,  # right after the position embedding
    # after it: a reshape, CLS, positions and dropout, per token; a conv stem (conv_stem_configs)
    # reads neighbouring patches and is refused by reads_each_patch_alone (pixel path)
    patch_embed=lambda model: child(model, "conv_proj"),
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
