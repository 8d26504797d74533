"""Adapter for HuggingFace ViT and DeiT image classifiers (transformers 4.x and 5.x layouts)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, QKVSource, inherits, pair
from ._family import Family, FamilyAdapter, child, hf_eager, second_tensor
from ._guard import has_hooks
from ._hf_shortcut import (
    HEADS,
    bidirectional_mask,
    bypassed_modules,
    is_transformers_class,
    legacy_bypassed_modules,
    legacy_prefix_rows,
    prefix_rows,
)
from ._labels import hf_class_names
from ._prenorm import PreNormBlock, PreNormViT
from ._preprocessing import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    attached_preprocessing,
)

SUPPORTED = (
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
)


def backbone_of(model: Any, names: tuple[str, ...] = ("vit", "deit")) -> nn.Module:
    """The backbone of an HF classifier: its first submodule called one of ``names``
    (``vit``/``deit`` for ViT and DeiT)."""
    for name in names:
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise UnsupportedModelError(f"{type(model).__name__} has no {'/'.join(names)} backbone")


def encoder_layers(backbone: Any) -> list[nn.Module]:
    """An HF backbone's encoder layers as they are now: ``layers`` (transformers 5.x) or
    ``encoder.layer`` (4.x); empty when it has neither."""
    layers = getattr(backbone, "layers", None)
    if layers is None:
        layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    return list(layers) if layers is not None else []


def projections(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module] | None:
    """(q, k, v, module returning attention probabilities) of one HF layer: ``attention
    .{q,k,v}_proj`` (5.x) or ``attention.attention.{query,key,value}`` (4.x)."""
    attn = getattr(layer, "attention", None)
    if attn is None:
        return None
    if all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
        return attn.q_proj, attn.k_proj, attn.v_proj, attn
    inner = getattr(attn, "attention", None)
    if inner is not None and all(
        isinstance(getattr(inner, n, None), nn.Linear) for n in ("query", "key", "value")
    ):
        return inner.query, inner.key, inner.value, inner
    return None


def hf_qkv(layer: nn.Module) -> QKVSource:
    found = projections(layer)
    assert found is not None
    q, k, v, _ = found
    return QKVSource(modules=(q, k, v), hidden_size=int(q.out_features))  # type: ignore[arg-type]


def hf_attention(layer: nn.Module) -> AttentionSource:
    found = projections(layer)
    assert found is not None
    return AttentionSource(module=found[3], extract=second_tensor)


def check_projections(model: Any, layers: list[nn.Module]) -> None:
    """Raise :class:`~xvit.UnsupportedModelError` unless every layer has q/k/v projections."""
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no encoder layers (looked for .layers and .encoder.layer)"
        )
    for i, layer in enumerate(layers):
        if projections(layer) is None:
            raise UnsupportedModelError(
                f"layer {i} of this {type(model).__name__} has no query/key/value (4.x) or "
                f"q_proj/k_proj/v_proj (5.x) projections; its structure was modified"
            )


#: Models whose eager path is on (:func:`legacy_eager`): transformers 4.x returns attention
#: probabilities only when the forward is asked for them.
_EAGER: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@contextmanager
def legacy_eager(model: nn.Module) -> Iterator[None]:
    """:func:`hf_eager`, and ``output_attentions=True`` for the forwards of a transformers
    4.x model inside the block (5.x's eager path always returns them, and asking there would
    install output-recording hooks on the model)."""
    with hf_eager(model):
        outer = model in _EAGER  # nested: the outer switch stays on
        _EAGER.add(model)
        try:
            yield
        finally:
            if not outer:
                _EAGER.discard(model)


def is_legacy_layout(layers: list[nn.Module]) -> bool:
    """True for the transformers 4.x module layout (``attention.attention.query``)."""
    return not hasattr(getattr(layers[0], "attention", None), "q_proj")


def hf_logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    """The logits of an HF image classifier (asking 4.x for attentions on the eager path)."""
    if model in _EAGER and is_legacy_layout(encoder_layers(backbone_of(model))):
        out = model(pixel_values=x, output_attentions=True)
    else:
        out = model(pixel_values=x)
    return out.logits  # type: ignore[no-any-return]


def _prefix(model: Any) -> int:
    emb = backbone_of(model).embeddings  # type: ignore[union-attr]
    return 2 if getattr(emb, "distillation_token", None) is not None else 1


def _preprocessing(model: Any) -> Preprocessing:
    attached = attached_preprocessing(model)
    if attached is not None:
        return attached
    size = pair(model.config.image_size)
    if "DeiT" in type(model).__name__:
        # DeiTImageProcessor: resize 256, centre-crop 224, bicubic, ImageNet statistics
        return Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, "bicubic", crop_pct=0.875)
    # ViTImageProcessor: resize straight to the model size, bilinear, mean = std = 0.5
    return Preprocessing(size, HALF, HALF, "bilinear", squash=True)


def _prenorm_layer(i: int, layer: Any, heads: int) -> PreNormBlock:
    found = projections(layer)
    if type(layer).__name__ not in ("ViTLayer", "DeiTLayer") or found is None:
        raise UnsupportedModelError(
            f"layer {i} ({type(layer).__name__}) is not a stock ViTLayer/DeiTLayer, which the "
            f"pre-norm parts describe"
        )
    qkv: tuple[Any, ...] = found[:3]
    if hasattr(layer, "mlp"):  # transformers 5.x
        proj, mlp = layer.attention.o_proj, layer.mlp
        fc1, act, fc2 = mlp.fc1, mlp.activation_fn, mlp.fc2
    else:  # 4.x: the MLP is split over intermediate and output
        proj = layer.attention.output.dense
        fc1, act, fc2 = (
            layer.intermediate.dense,
            layer.intermediate.intermediate_act_fn,
            layer.output.dense,
        )
    return PreNormBlock(
        norm1=layer.layernorm_before,
        qkv=qkv,
        num_heads=heads,
        scale=float(qkv[0].out_features // heads) ** -0.5,
        proj=proj,
        norm2=layer.layernorm_after,
        fc1=fc1,
        act=act,
        fc2=fc2,
    )


def _prenorm(model: Any) -> PreNormViT:
    """HF ViT/DeiT classifiers by their pre-norm parts: the classifier reads the CLS row, or
    CLS and distillation rows (``DeiTForImageClassificationWithTeacher``)."""
    backbone: Any = backbone_of(model)
    heads = int(model.config.num_attention_heads)
    layers = encoder_layers(backbone)
    blocks = tuple(_prenorm_layer(i, layer, heads) for i, layer in enumerate(layers))
    classifiers: tuple[Any, ...]
    if hasattr(model, "distillation_classifier"):
        classifiers = (model.cls_classifier, model.distillation_classifier)
    else:
        classifiers = (model.classifier,)
    if not all(isinstance(c, nn.Linear) for c in classifiers):
        raise UnsupportedModelError(f"this {type(model).__name__} has no Linear classifier")
    return PreNormViT(
        tokens=backbone.embeddings,
        blocks=blocks,
        norm=backbone.layernorm,
        readout="rows",
        heads=classifiers,
    )


def _head(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The final layernorm and the classifier(s) on the CLS (and distillation) row."""
    backbone: Any = backbone_of(model)
    h = backbone.layernorm(tokens)
    if hasattr(model, "distillation_classifier"):
        return (model.cls_classifier(h[:, 0]) + model.distillation_classifier(h[:, 1])) / 2
    return model.classifier(h[:, 0])  # type: ignore[no-any-return]


HF_VIT = Family(
    name="hf",
    description=(
        "HuggingFace ViTForImageClassification, DeiTForImageClassification, "
        "DeiTForImageClassificationWithTeacher (transformers 4.x and 5.x)"
    ),
    matches=lambda model: inherits(model, "transformers", SUPPORTED),
    blocks=lambda model: encoder_layers(backbone_of(model)),
    qkv=hf_qkv,
    attention=hf_attention,
    norm1=lambda layer: layer.layernorm_before,
    num_heads=lambda model: int(model.config.num_attention_heads),
    prefix_tokens=_prefix,
    patch_size=lambda model: pair(model.config.patch_size),
    image_size=lambda model: pair(model.config.image_size),
    in_chans=lambda model: int(getattr(model.config, "num_channels", 3)),
    pooling=lambda model: "prefix" if hasattr(model, "distillation_classifier") else "token",
    eager=legacy_eager,
    logits=hf_logits,
    num_classes=lambda model: int(model.config.num_labels),
    preprocessing=_preprocessing,
    class_names=lambda model, n: hf_class_names(model.config, n),
    prefix_rows_logits=lambda model, x: prefix_rows_logits(model, x),
    check=lambda model: check_projections(model, encoder_layers(backbone_of(model))),
    prenorm=_prenorm,
    head=_head,
    token_entry=lambda model: child(backbone_of(model), "embeddings"),
    patch_embed=lambda model: child(child(backbone_of(model), "embeddings"), "patch_embeddings"),
)


class HFViTAdapter(FamilyAdapter):
    """HuggingFace ``ViTForImageClassification``, ``DeiTForImageClassification`` and
    ``DeiTForImageClassificationWithTeacher``; the declaration is :data:`HF_VIT`.

    Both module layouts are read: transformers 5.x (``layers[i].attention.q_proj``) and 4.x
    (``encoder.layer[i].attention.attention.query``). Attention probabilities come from the
    eager attention path, switched on through ``config._attn_implementation`` for the call.

    Example:
        >>> import xvit
        >>> from transformers import ViTConfig, ViTForImageClassification
        >>> config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                    intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
        >>> adapter = xvit.get_adapter(ViTForImageClassification(config))
        >>> type(adapter).__name__, adapter.geometry.num_prefix_tokens, adapter.geometry.grid()
        ('HFViTAdapter', 1, (4, 4))
    """

    family = HF_VIT
    framework = "transformers"
    priority = 100  # any subclass matches: adapters for narrower families go first

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._layers = list(self.family.blocks(model))

    @property
    def backbone(self) -> nn.Module:
        return backbone_of(self.model)

    @property
    def layers(self) -> list[nn.Module]:
        """The encoder layers, first to last (``layers`` in 5.x, ``encoder.layer`` in 4.x)."""
        return list(self._layers)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def legacy_layout(self) -> bool:
        """True for the transformers 4.x module layout (``attention.attention.query``)."""
        return is_legacy_layout(self._layers)


def prefix_rows_logits(model: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The forward with a shortcut in the last layer: the classifier heads read only the
    CLS row (and the distillation row for ``DeiTForImageClassificationWithTeacher``), so
    the last layer computes attention queries, the attention output and the MLP for those
    rows alone; keys and values still come from every token. The embeddings and all
    other layers run through the model's own modules (and attention implementation).
    Saves about (N - T) / N of one layer; same logits up to float rounding.

    None (the plain forward runs) for anything but exactly the three supported classes with
    their stock layers, in training mode, on the eager attention path, when an attention
    mask would be passed, or when hooks or a replaced ``forward`` sit on a module the
    shortcut bypasses or on anything in the last layer.
    """
    rows = _shortcut_rows(model)
    if rows is None:
        return None
    backbone: Any = backbone_of(model)
    layers = encoder_layers(backbone)
    legacy = is_legacy_layout(layers)
    expected = backbone.embeddings.patch_embeddings.projection.weight.dtype
    if x.dtype != expected:  # as ViTModel / DeiTModel do
        x = x.to(expected)
    h = backbone.embeddings(x)
    if not legacy and bidirectional_mask(backbone.config, h) is not None:
        return None  # e.g. flex attention's BlockMask: keep it exact
    for layer in layers[:-1]:
        out = layer(h)
        h = out[0] if isinstance(out, tuple) else out  # 4.x layers return tuples
    last = layers[-1]
    h = legacy_prefix_rows(last, h, rows) if legacy else prefix_rows(last, h, rows)
    h = backbone.layernorm(h)  # the pooler (if any) never reaches the logits
    if rows == 2:
        return (model.cls_classifier(h[:, 0, :]) + model.distillation_classifier(h[:, 1, :])) / 2
    return model.classifier(h[:, 0, :])  # type: ignore[no-any-return]


def _shortcut_rows(model: Any) -> int | None:
    """Rows the classifier reads when the shortcut may be taken, else None."""
    cls = type(model)
    head = HEADS.get(cls.__name__)
    if head is None or not is_transformers_class(model, (cls.__name__,)):
        return None  # a subclass may change the forward or the head
    if model in _EAGER or model.training:
        return None
    attr, backbone_class, rows = head
    backbone = getattr(model, attr, None)
    if backbone is None or not is_transformers_class(backbone, (backbone_class,)):
        return None
    if not isinstance(getattr(backbone, "layernorm", None), nn.LayerNorm):
        return None  # applied to the kept rows only: it must work row by row
    layers = encoder_layers(backbone)
    if not layers:
        return None
    last = layers[-1]
    if is_legacy_layout(layers):
        bypassed = legacy_bypassed_modules(last)
        if bypassed is None:
            return None
        bypassed.append(getattr(backbone, "encoder", model))
    else:
        bypassed = bypassed_modules(last)
        if bypassed is None:
            return None
    if any(m.training for m in last.modules()):
        return None
    # the final layernorm sees only the kept rows; a pooler (None in these classes) is skipped
    seen_differently = [getattr(backbone, n, None) for n in ("layernorm", "pooler")]
    others = [m for m in seen_differently if isinstance(m, nn.Module)]
    if has_hooks([model, backbone, *bypassed, *others, *last.modules()]):
        return None
    return rows
