"""Zero-shot classifiers over HuggingFace CLIP and SigLIP (:func:`xvit.zero_shot`) as a
declared family.

The thing explained is the :class:`~xvit.models.ZeroShotClassifier`: its classes are the
prompts and its logits the model's own scaled image-text similarities. Blocks, q/k/v,
attention probabilities, prefix tokens and the patch grid are read from the vision tower it
wraps (``vision_model``, shared with the user's model). CLIP has a CLS token and pools it
(``post_layernorm`` of the CLS row, then ``visual_projection``): pooling ``"token"``. SigLIP
has no prefix token; a learned probe attends over every token of the last layer
(``SiglipMultiheadAttentionPoolingHead``): pooling ``"attention-pool"``, so every row of the
last layer reaches the logits. Attention probabilities exist on the eager attention path,
entered through the vision config's ``_attn_implementation`` for the call (transformers
4.x: also its ``output_attentions``, see :func:`~xvit.models._family.hf_eager`).

Zero-shot classifiers over open_clip models are declared in
:mod:`~xvit.models.open_clip_zero_shot`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, QKVSource, pair
from ._family import Family, FamilyAdapter, child, hf_eager, second_tensor
from ._preprocessing import HALF, Preprocessing, attached_preprocessing
from ._zero_shot import CLASSIFIER_HEAD, ZeroShotClassifier

#: CLIPImageProcessor's normalisation (OpenAI's statistics of its training set).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _tower(model: Any) -> nn.Module:
    tower = getattr(model, "vision_model", None)
    if not isinstance(tower, nn.Module):
        raise UnsupportedModelError(
            "this zero-shot classifier has no HuggingFace vision_model; make it with "
            "xvit.zero_shot from a CLIPModel or SiglipModel"
        )
    return tower


def _layers(model: Any) -> list[nn.Module]:
    encoder = getattr(_tower(model), "encoder", None)
    return list(getattr(encoder, "layers", None) or [])


def _attention(layer: Any) -> Any:
    return layer.self_attn


def _qkv(layer: Any) -> QKVSource:
    attn = _attention(layer)
    return QKVSource(
        modules=(attn.q_proj, attn.k_proj, attn.v_proj), hidden_size=int(attn.q_proj.out_features)
    )


def _config(model: Any) -> Any:
    return _tower(model).config


def _is_clip(model: Any) -> bool:
    """CLIP towers embed a CLS token; SigLIP towers have none."""
    embeddings = getattr(_tower(model), "embeddings", None)
    return getattr(embeddings, "class_embedding", None) is not None


def _pooling(model: Any) -> str:
    if _is_clip(model):
        return "token"  # visual_projection(post_layernorm(h[:, 0]))
    if getattr(_tower(model), "head", None) is not None:
        return "attention-pool"  # SigLIP: a learned probe attends over every token
    return "other"


def _preprocessing(model: Any) -> Preprocessing:
    attached = attached_preprocessing(model)
    if attached is not None:
        return attached
    size = pair(_config(model).image_size)
    if _is_clip(model):
        # CLIPImageProcessor: shorter side to the model size, centre crop, bicubic
        return Preprocessing(size, CLIP_MEAN, CLIP_STD, "bicubic")
    # SiglipImageProcessor: resize straight to the model size, bicubic, mean = std = 0.5
    return Preprocessing(size, HALF, HALF, "bicubic", squash=True)


def _check(model: Any) -> None:
    layers = _layers(model)
    if not layers:
        raise UnsupportedModelError(
            f"the vision tower {type(_tower(model)).__name__} of this zero-shot classifier has "
            f"no encoder.layers"
        )
    names = ("q_proj", "k_proj", "v_proj")
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if not all(isinstance(getattr(attn, n, None), nn.Linear) for n in names):
            raise UnsupportedModelError(
                f"layer {i} of the vision tower has no self_attn with q_proj/k_proj/v_proj "
                f"projections; its structure was modified"
            )


HF_ZERO_SHOT = Family(
    name="hf-zero-shot",
    description=(
        "xvit.zero_shot(...) classifiers over HuggingFace CLIPModel and SiglipModel (prompts "
        "as classes)"
    ),
    matches=lambda model: (
        isinstance(model, ZeroShotClassifier)
        and isinstance(getattr(model, "vision_model", None), nn.Module)
    ),
    blocks=_layers,
    qkv=_qkv,
    attention=lambda layer: AttentionSource(module=_attention(layer), extract=second_tensor),
    norm1=lambda layer: layer.layer_norm1,
    num_heads=lambda model: int(_config(model).num_attention_heads),
    prefix_tokens=lambda model: 1 if _is_clip(model) else 0,
    patch_size=lambda model: pair(_config(model).patch_size),
    image_size=lambda model: pair(_config(model).image_size),
    in_chans=lambda model: int(getattr(_config(model), "num_channels", 3)),
    pooling=_pooling,
    eager=hf_eager,
    preprocessing=_preprocessing,
    check=_check,
    token_entry=lambda model: child(_tower(model), "embeddings"),
    # after the convolution: a flatten, CLS (CLIP), positions and CLIP's pre_layrnorm, per token
    patch_embed=lambda model: child(child(_tower(model), "embeddings"), "patch_embedding"),
    **CLASSIFIER_HEAD,
)


class HFZeroShotAdapter(FamilyAdapter):
    """Zero-shot classifiers over HuggingFace CLIP and SigLIP; the declaration is
    :data:`HF_ZERO_SHOT`.

    Example:
        >>> import torch, xvit
        >>> from transformers import SiglipConfig, SiglipModel
        >>> tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...             num_attention_heads=2)
        >>> model = SiglipModel(SiglipConfig(text_config=tiny,
        ...                                  vision_config=dict(tiny, image_size=16, patch_size=8)))
        >>> adapter = xvit.get_adapter(xvit.zero_shot(model, text_features=torch.randn(3, 16)))
        >>> adapter.geometry.num_prefix_tokens, adapter.geometry.grid(), adapter.pooling
        (0, (2, 2), 'attention-pool')
    """

    family = HF_ZERO_SHOT
    framework = "transformers"
    priority = 100
