"""HuggingFace BEiT and Data2VecVision image classifiers as one declared family.

Both carry BEiT's relative position bias (per layer, or shared by all layers) and one CLS
token; by default the head reads the mean of the patch rows (``use_mean_pooling``), else
the CLS row. Two module layouts exist, and the declaration reads either:

- transformers 5.x ``BeitForImageClassification``: ``beit.layers[i].attention.{q,k,v}_proj``.
  The layer passes the relative bias to the attention module as its ``attention_mask``, so
  the eager path's probabilities (the module's output[1]) include it. The eager path is
  switched on per call through ``config._attn_implementation``.
- ``Data2VecVisionForImageClassification`` (still so in 5.x) and transformers 4.x
  ``BeitForImageClassification``: ``encoder.layer[i].attention.attention.{query,key,value}``.
  The self-attention class is chosen when the model is built (SDPA by default), so the
  config switch changes nothing there: for the call, each SDPA self-attention module takes
  the class it derives from, the eager one (same state, the model's own eager forward),
  and gets its own class back on exit. Its probabilities, with the bias added, pass through
  the module's ``dropout``, where they are recorded.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, inherits, model_lock, pair
from ._family import FamilyAdapter, child, hf_eager, second_tensor, tensor_or_none
from ._preprocessing import HALF, Preprocessing, attached_preprocessing
from .hf_vit import HF_VIT, backbone_of, check_projections, encoder_layers, projections

SUPPORTED = ("BeitForImageClassification", "Data2VecVisionForImageClassification")


def _backbone(model: Any) -> nn.Module:
    return backbone_of(model, ("beit", "data2vec_vision"))


def _layers(model: Any) -> list[nn.Module]:
    return encoder_layers(_backbone(model))


def _attention(layer: nn.Module) -> AttentionSource:
    found = projections(layer)
    assert found is not None
    module = found[3]
    if hasattr(module, "q_proj"):  # 5.x: (output, probabilities) on the eager path
        return AttentionSource(module=module, extract=second_tensor)
    dropout: nn.Module = module.dropout  # type: ignore[assignment]
    return AttentionSource(module=dropout, extract=tensor_or_none)  # 4.x layout


def _eager_class(module: nn.Module) -> type | None:
    """The eager class a transformers SDPA self-attention module derives from, else None
    (a module already eager, or one whose class is not a plain transformers SDPA class)."""
    cls = type(module)
    if not (cls.__module__.startswith("transformers.") and "Sdpa" in cls.__name__):
        return None
    base = cls.__mro__[1]
    return base if base.__name__ == cls.__name__.replace("Sdpa", "") else None


@contextmanager
def beit_eager(model: nn.Module) -> Iterator[None]:
    """The eager attention path of either layout for the block: the configs on ``"eager"``
    (5.x), and every SDPA self-attention module (4.x layout) in its eager base class; each
    module's own class and each config's setting are back on exit."""
    with model_lock(model), hf_eager(model):
        found = [(m, type(m), _eager_class(m)) for m in model.modules()]
        swapped = [(m, own, eager) for m, own, eager in found if eager is not None]
        try:
            for module, _, eager in swapped:
                module.__class__ = eager
            yield
        finally:
            for module, own, _ in swapped:
                module.__class__ = own


def _check(model: Any) -> None:
    layers = _layers(model)
    check_projections(model, layers)
    for i, layer in enumerate(layers):
        module = projections(layer)[3]  # type: ignore[index]
        if not hasattr(module, "q_proj") and not isinstance(
            getattr(module, "dropout", None), nn.Dropout
        ):
            raise UnsupportedModelError(
                f"layer {i} of this {type(model).__name__} has no attention.attention.dropout, "
                f"where its attention probabilities pass; its structure was modified"
            )


def _preprocessing(model: Any) -> Preprocessing:
    attached = attached_preprocessing(model)
    if attached is not None:
        return attached
    # BeitImageProcessor as the hub's BEiT/Data2Vec checkpoints ship it: resize straight to
    # the model size, mean = std = 0.5
    return Preprocessing(pair(model.config.image_size), HALF, HALF, "bilinear", squash=True)


def _relative_index_made_outside_inference_mode(model: Any, x: torch.Tensor) -> None:
    """transformers caches each relative position index per window size for the whole
    process (an ``lru_cache`` on a static method). One made inside ``torch.inference_mode``
    (xvit scores masked images there) is an inference tensor, and every later forward with
    gradients fails on it. So the index for this input's window is made first, outside
    inference mode; the cache then serves that ordinary tensor to every forward."""
    patch = pair(model.config.patch_size)
    window = (int(x.shape[-2]) // patch[0], int(x.shape[-1]) // patch[1])
    kinds = {type(m) for m in model.modules()}
    makers = [inspect.getattr_static(k, "generate_relative_position_index", None) for k in kinds]
    with torch.inference_mode(False):
        for make in makers:
            if isinstance(make, staticmethod):
                make.__func__(window)


def _logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    if torch.is_inference_mode_enabled():
        _relative_index_made_outside_inference_mode(model, x)
    return model(pixel_values=x).logits  # type: ignore[no-any-return]


def _head(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The final layernorm (Identity under mean pooling), the pooler (CLS row, or the
    layernormed mean of the patch rows) and the classifier."""
    backbone: Any = _backbone(model)
    return model.classifier(backbone.pooler(backbone.layernorm(tokens)))  # type: ignore[no-any-return]


#: HF ViT's declaration (config-read geometry, q/k/v projections, class names) with what
#: BEiT and Data2VecVision do differently: their backbones and layouts, the attention module,
#: one CLS token whatever the head reads, any input size, mean or CLS pooling (no last-block
#: shortcut), the per-call eager classes and logits made safe for the relative index cache.
HF_BEIT = replace(
    HF_VIT,
    name="hf-beit",
    description=(
        "HuggingFace BeitForImageClassification (transformers 4.x and 5.x), "
        "Data2VecVisionForImageClassification (relative position bias)"
    ),
    matches=lambda model: inherits(model, "transformers", SUPPORTED),
    blocks=_layers,
    attention=_attention,
    prefix_tokens=lambda model: 1,  # CLS, also when the head mean-pools the patches
    dynamic_size=lambda model: True,  # relative tables are resampled to the patch grid
    pooling=lambda model: "mean" if model.config.use_mean_pooling else "token",
    eager=beit_eager,
    logits=_logits,
    preprocessing=_preprocessing,
    prefix_rows_logits=lambda model, x: None,
    prenorm=None,  # other block shapes
    check=_check,
    head=_head,
    token_entry=None,  # the relative position bias needs every token's place in the grid
    # the convolution, not patch_embeddings: that returns (tokens, grid) in Data2VecVision and
    # transformers 4.x, which no stand-in tensor replaces; after the convolution come a
    # flatten, CLS, positions (interpolated from the input's shape) and dropout, per token
    patch_embed=lambda model: child(
        child(child(_backbone(model), "embeddings"), "patch_embeddings"), "projection"
    ),
)


class HFBeitAdapter(FamilyAdapter):
    """HuggingFace BEiT and Data2VecVision classifiers; the declaration is :data:`HF_BEIT`.

    Example:
        >>> import xvit
        >>> from transformers import BeitConfig, BeitForImageClassification
        >>> m = BeitForImageClassification(BeitConfig(
        ...     hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        ...     image_size=32, patch_size=8, num_labels=3, use_relative_position_bias=True))
        >>> adapter = xvit.get_adapter(m)
        >>> type(adapter).__name__, adapter.geometry.grid(), adapter.pooling
        ('HFBeitAdapter', (4, 4), 'mean')
    """

    family = HF_BEIT
    framework = "transformers"
    priority = 100
