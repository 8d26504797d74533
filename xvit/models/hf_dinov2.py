"""HuggingFace DINOv2 image classifiers, with and without register tokens, as a declared
family.

Their head reads the CLS row concatenated with the mean of the patch rows (registers
excluded), so every row of the last layer reaches the logits: pooling ``"token+mean"``, no
last-layer shortcut. The position embedding is interpolated on every forward, so any input
whose sides are multiples of the patch size works. Both module layouts are read:
transformers 5.x (``attention.q_proj``) and 4.x (``encoder.layer[i].attention.attention
.query``; DINOv2 with registers exists from 4.48).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ._base import inherits, pair
from ._family import FamilyAdapter, child, hf_eager
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, attached_preprocessing
from .hf_vit import HF_VIT, check_projections, encoder_layers

SUPPORTED = ("Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification")


def _backbone(model: Any) -> nn.Module:
    for name in ("dinov2", "dinov2_with_registers"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            return sub
    return model


def _prefix(model: Any) -> int:
    """CLS plus the register tokens ([CLS, registers, patches])."""
    return 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)


def _preprocessing(model: Any) -> Preprocessing:
    attached = attached_preprocessing(model)
    if attached is not None:
        return attached
    # BitImageProcessor as DINOv2 ships it: resize 256, centre-crop 224, bicubic
    return Preprocessing(
        pair(model.config.image_size), IMAGENET_MEAN, IMAGENET_STD, "bicubic", crop_pct=0.875
    )


def _head(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The final layernorm, then the classifier on [CLS, mean of the patch rows]."""
    backbone: Any = _backbone(model)
    h = backbone.layernorm(tokens)
    pooled = torch.cat([h[:, 0], h[:, _prefix(model) :].mean(dim=1)], dim=1)
    return model.classifier(pooled)  # type: ignore[no-any-return]


#: HF ViT's declaration (config-read geometry, q/k/v projections, class names) with what
#: DINOv2 does differently: its backbone, norm name, register tokens, any input size and a
#: head that reads the CLS token and the patch mean (no last-block shortcut).
HF_DINOV2 = replace(
    HF_VIT,
    name="hf-dinov2",
    description=(
        "HuggingFace Dinov2ForImageClassification, Dinov2WithRegistersForImageClassification"
    ),
    matches=lambda model: inherits(model, "transformers", SUPPORTED),
    blocks=lambda model: encoder_layers(_backbone(model)),
    norm1=lambda layer: layer.norm1,
    prefix_tokens=_prefix,
    dynamic_size=lambda model: True,  # position embeddings are interpolated every forward
    pooling=lambda model: "token+mean",  # classifier(cat[CLS, mean(patches)])
    eager=hf_eager,
    preprocessing=_preprocessing,
    prefix_rows_logits=lambda model, x: None,
    prenorm=None,  # other block shapes
    check=lambda model: check_projections(model, encoder_layers(_backbone(model))),
    head=_head,
    token_entry=lambda model: child(_backbone(model), "embeddings"),  # registers: after positions
    # after it: CLS, positions (interpolated from the input's shape, not its pixels),
    # registers and dropout, each per token
    patch_embed=lambda model: child(child(_backbone(model), "embeddings"), "patch_embeddings"),
)


class HFDinov2Adapter(FamilyAdapter):
    """HuggingFace DINOv2 classifiers; the declaration is :data:`HF_DINOV2`.

    Example:
        >>> import xvit
        >>> from transformers import Dinov2WithRegistersConfig as Config
        >>> from transformers import Dinov2WithRegistersForImageClassification as Classifier
        >>> m = Classifier(Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                       intermediate_size=64, image_size=32, patch_size=8,
        ...                       num_labels=3, num_register_tokens=4))
        >>> adapter = xvit.get_adapter(m)
        >>> adapter.geometry.num_prefix_tokens, adapter.geometry.grid(), adapter.pooling
        (5, (4, 4), 'token+mean')
    """

    family = HF_DINOV2
    framework = "transformers"
    priority = 100
