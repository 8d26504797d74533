"""Zero-shot classifiers over open_clip CLIP models (:func:`xvit.zero_shot`) as a declared
family.

The thing explained is the :class:`~xvit.models.ZeroShotClassifier`: its classes are the
prompts and its logits the model's own ``logit_scale.exp() * cos`` (plus ``logit_bias``).
Blocks, q/k/v, attention probabilities, prefix tokens and the patch grid are read from the
vision tower it wraps (``visual``, shared with the user's model), which must be open_clip's
``VisionTransformer`` built from plain ``ResidualAttentionBlock`` s. Their attention is
``nn.MultiheadAttention`` (open_clip 3.x), read on the same eager path as torchvision's ViT
(:func:`~xvit.models._multihead.multihead_eager`). The tower embeds one CLS token; how it is
pooled is read from ``attn_pool`` and ``pool_type``. open_clip is never imported here: the
tower is recognised by its class's name and module.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, QKVSource, inherits, pair
from ._family import Family, FamilyAdapter, child, second_tensor
from ._multihead import multihead_eager
from ._preprocessing import Preprocessing, attached_preprocessing
from ._zero_shot import CLASSIFIER_HEAD, ZeroShotClassifier
from .hf_zero_shot import CLIP_MEAN, CLIP_STD

#: open_clip's ``pool_type`` values and the pooling they declare (no ``attn_pool``).
_POOL_TYPES = {"tok": "token", "avg": "mean"}


def _tower(model: Any) -> Any:
    tower = getattr(model, "visual", None)
    if not inherits(tower, "open_clip", ("VisionTransformer",)):
        raise UnsupportedModelError(
            f"this open_clip model's vision tower is a {type(tower).__name__}, not open_clip's "
            f"VisionTransformer; xvit explains open_clip ViT models (for example "
            f"open_clip.create_model('ViT-B-32')), not ResNet or timm towers"
        )
    return tower


def _blocks(model: Any) -> list[Any]:
    transformer = getattr(_tower(model), "transformer", None)
    return list(getattr(transformer, "resblocks", None) or [])


def _qkv(block: Any) -> QKVSource:
    mha = block.attn
    return QKVSource(modules=(mha,), hidden_size=int(mha.embed_dim), weight=mha.in_proj_weight)


def _eager(model: Any) -> AbstractContextManager[None]:
    return multihead_eager(model, [block.attn for block in _blocks(model)])


def _pooling(model: Any) -> str:
    tower = _tower(model)
    if getattr(tower, "attn_pool", None) is not None:
        return "attention-pool"  # learned queries attend over every token
    return _POOL_TYPES.get(str(getattr(tower, "pool_type", "")), "other")


def _preprocessing(model: Any) -> Preprocessing:
    attached = attached_preprocessing(model)
    if attached is not None:
        return attached
    tower = _tower(model)
    # open_clip.create_model sets the tower's statistics; the defaults are OpenAI's
    mean = tuple(getattr(tower, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(tower, "image_std", None) or CLIP_STD)
    return Preprocessing(pair(tower.image_size), mean, std, "bicubic")


def _check(model: Any) -> None:
    for i, block in enumerate(_blocks(model)):
        mha = getattr(block, "attn", None)
        if not isinstance(mha, nn.MultiheadAttention) or not mha.batch_first:
            raise UnsupportedModelError(
                f"block {i} of this open_clip VisionTransformer attends through a "
                f"{type(mha).__name__}, not a batch-first nn.MultiheadAttention; xvit reads "
                f"open_clip's default blocks (no qk_norm, scaled cosine or scaled heads)"
            )


def _is_open_clip_classifier(model: object) -> bool:
    return isinstance(model, ZeroShotClassifier) and isinstance(
        getattr(model, "visual", None), nn.Module
    )


OPEN_CLIP_ZERO_SHOT = Family(
    name="open-clip-zero-shot",
    description=(
        "xvit.zero_shot(...) classifiers over open_clip CLIP models with a VisionTransformer "
        "tower (prompts as classes)"
    ),
    matches=_is_open_clip_classifier,
    blocks=_blocks,
    qkv=_qkv,
    attention=lambda block: AttentionSource(module=block.attn, extract=second_tensor),
    norm1=lambda block: block.ln_1,
    num_heads=lambda model: int(_blocks(model)[0].attn.num_heads),
    prefix_tokens=lambda model: 1,  # class_embedding, always
    patch_size=lambda model: pair(_tower(model).patch_size),
    image_size=lambda model: pair(_tower(model).image_size),
    in_chans=lambda model: int(_tower(model).conv1.in_channels),
    pooling=_pooling,
    eager=_eager,
    qkv_on_eager_path=True,  # nn.MultiheadAttention projects inside one fused call
    preprocessing=_preprocessing,
    check=_check,
    # after conv1: a reshape, CLS, positions, eval-mode patch dropout and ln_pre, per token
    patch_embed=lambda model: child(_tower(model), "conv1"),
    **CLASSIFIER_HEAD,
)


class OpenClipZeroShotAdapter(FamilyAdapter):
    """Zero-shot classifiers over open_clip CLIP ViTs; the declaration is
    :data:`OPEN_CLIP_ZERO_SHOT`. With open_clip installed (``pip install xvit[open-clip]``),
    ``xvit.get_adapter(xvit.zero_shot(open_clip_model, text_features=f))`` returns one; the
    examples run in tests/test_open_clip.py, as open_clip is optional.

    Example:
        >>> import xvit
        >>> cls = xvit.models.OpenClipZeroShotAdapter
        >>> cls.family.name, cls.framework, sorted(cls.capabilities)
        ('open-clip-zero-shot', 'open_clip', ['attention', 'patch_tokens', 'qkv'])
    """

    family = OPEN_CLIP_ZERO_SHOT
    framework = "open_clip"
    priority = 100
