"""Adapter for HuggingFace ViT and DeiT image classifiers (transformers 4.x and 5.x layouts)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._errors import UnsupportedModelError
from ._base import (
    AttentionSource,
    BlockSources,
    Geometry,
    ModelAdapter,
    QKVSource,
    inherits,
    model_lock,
    pair,
)
from ._guard import attribute_switched, has_hooks
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


def _second_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, (tuple, list)) and len(output) > 1:
        t = output[1]
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            return t
    return None


class HFViTAdapter(ModelAdapter):
    """HuggingFace ``ViTForImageClassification``, ``DeiTForImageClassification`` and
    ``DeiTForImageClassificationWithTeacher``.

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

    framework = "transformers"
    description = (
        "HuggingFace ViTForImageClassification, DeiTForImageClassification, "
        "DeiTForImageClassificationWithTeacher (transformers 4.x and 5.x)"
    )
    priority = 100  # any subclass matches: adapters for narrower families go first

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._output_attentions = False
        self._layers = self._find_layers()
        for i, layer in enumerate(self._layers):
            if self._projections(layer) is None:
                raise UnsupportedModelError(
                    f"layer {i} of this {type(model).__name__} has no query/key/value (4.x) or "
                    f"q_proj/k_proj/v_proj (5.x) projections; its structure was modified"
                )

    @classmethod
    def matches(cls, model: object) -> bool:
        return inherits(model, "transformers", SUPPORTED)

    # --- structure ------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        for name in ("vit", "deit"):
            sub = getattr(self.model, name, None)
            if isinstance(sub, nn.Module):
                return sub
        raise UnsupportedModelError(f"{type(self.model).__name__} has no vit/deit backbone")

    def _find_layers(self) -> list[nn.Module]:
        layers = self._current_layers()
        if not layers:
            raise UnsupportedModelError(
                f"{type(self.model).__name__} has no encoder layers (looked for .layers and "
                f".encoder.layer)"
            )
        return layers

    def _current_layers(self) -> list[nn.Module]:
        """The backbone's encoder layers as they are now (``layers`` in 5.x, ``encoder.layer``
        in 4.x); read again by the shortcut, since a user may have replaced them."""
        bb = self.backbone
        layers = getattr(bb, "layers", None)
        if layers is None:
            layers = getattr(getattr(bb, "encoder", None), "layer", None)
        return list(layers) if layers is not None else []

    @property
    def layers(self) -> list[nn.Module]:
        """The encoder layers, first to last (``layers`` in 5.x, ``encoder.layer`` in 4.x)."""
        return list(self._layers)

    @staticmethod
    def _projections(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module] | None:
        """(q, k, v, module returning attention probabilities) of one layer."""
        attn = getattr(layer, "attention", None)
        if attn is None:
            return None
        if all(
            isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")
        ):
            return attn.q_proj, attn.k_proj, attn.v_proj, attn
        inner = getattr(attn, "attention", None)
        if inner is not None and all(
            isinstance(getattr(inner, n, None), nn.Linear) for n in ("query", "key", "value")
        ):
            return inner.query, inner.key, inner.value, inner
        return None

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def geometry(self) -> Geometry:
        c = self.config
        prefix = (
            2 if getattr(self.backbone.embeddings, "distillation_token", None) is not None else 1
        )
        return Geometry(
            num_blocks=len(self._layers),
            num_heads=int(c.num_attention_heads),
            hidden_size=int(c.hidden_size),
            num_prefix_tokens=prefix,
            patch_size=pair(c.patch_size),
            image_size=pair(c.image_size),
            in_chans=int(getattr(c, "num_channels", 3)),
            dynamic_size=False,
        )

    @property
    def preprocessing(self) -> Preprocessing:
        attached = attached_preprocessing(self.model)
        if attached is not None:
            return attached
        size = self.geometry.image_size
        if "DeiT" in type(self.model).__name__:
            # DeiTImageProcessor: resize 256, centre-crop 224, bicubic, ImageNet statistics
            return Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, "bicubic", crop_pct=0.875)
        # ViTImageProcessor: resize straight to the model size, bilinear, mean = std = 0.5
        return Preprocessing(size, HALF, HALF, "bilinear", squash=True)

    @property
    def num_classes(self) -> int:
        return int(self.config.num_labels)

    def class_names(self) -> tuple[str, ...] | None:
        """The names in ``config.id2label`` (None when HF's ``LABEL_<i>`` placeholders)."""
        return hf_class_names(self.config, self.num_classes)

    def blocks(self) -> list[BlockSources]:
        out = []
        for layer in self._layers:
            found = self._projections(layer)
            assert found is not None
            q, k, v, attn_module = found
            out.append(
                BlockSources(
                    qkv=QKVSource(modules=(q, k, v), hidden_size=int(q.out_features)),  # type: ignore[arg-type]
                    attention=AttentionSource(module=attn_module, extract=_second_tensor),
                    norm1=layer.layernorm_before,  # type: ignore[arg-type]
                )
            )
        return out

    # --- running --------------------------------------------------------------------------
    @property
    def legacy_layout(self) -> bool:
        """True for the transformers 4.x module layout (``attention.attention.query``)."""
        return not hasattr(self._layers[0].attention, "q_proj")

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        # 4.x returns attention probabilities only when asked; 5.x's eager path always
        # returns them, and asking there would install output-recording hooks on the model
        if self._output_attentions and self.legacy_layout:
            out = self.model(pixel_values=x, output_attentions=True)
        else:
            out = self.model(pixel_values=x)
        return out.logits

    def scoring_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The forward with a shortcut in the last layer: the classifier heads read only the
        CLS row (and the distillation row for ``DeiTForImageClassificationWithTeacher``), so
        the last layer computes attention queries, the attention output and the MLP for those
        rows alone; keys and values still come from every token. The embeddings and all
        other layers run through the model's own modules (and attention implementation).
        Saves about (N - T) / N of one layer; same logits up to float rounding.

        Falls back to :meth:`forward_logits` for anything but exactly the three supported
        classes with their stock layers, in training mode, inside :meth:`eager_attention`,
        when an attention mask would be passed, or when hooks or a replaced ``forward`` sit
        on a module the shortcut bypasses or on anything in the last layer.
        """
        rows = self._shortcut_rows()
        if rows is None:
            return self.forward_logits(x)
        model: Any = self.model
        backbone: Any = self.backbone
        legacy = self.legacy_layout
        expected = backbone.embeddings.patch_embeddings.projection.weight.dtype
        if x.dtype != expected:  # as ViTModel / DeiTModel do
            x = x.to(expected)
        h = backbone.embeddings(x)
        if not legacy and bidirectional_mask(backbone.config, h) is not None:
            return self.forward_logits(x)  # e.g. flex attention's BlockMask: keep it exact
        layers = self._current_layers()
        for layer in layers[:-1]:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out  # 4.x layers return tuples
        last = layers[-1]
        h = legacy_prefix_rows(last, h, rows) if legacy else prefix_rows(last, h, rows)
        h = backbone.layernorm(h)  # the pooler (if any) never reaches the logits
        if rows == 2:
            return (
                model.cls_classifier(h[:, 0, :]) + model.distillation_classifier(h[:, 1, :])
            ) / 2
        return model.classifier(h[:, 0, :])  # type: ignore[no-any-return]

    def _shortcut_rows(self) -> int | None:
        """Rows the classifier reads when :meth:`scoring_logits` may take its shortcut, else
        None."""
        model = self.model
        cls = type(model)
        head = HEADS.get(cls.__name__)
        if head is None or not is_transformers_class(model, (cls.__name__,)):
            return None  # a subclass may change the forward or the head
        if self._output_attentions or model.training:
            return None
        attr, backbone_class, rows = head
        backbone = getattr(model, attr, None)
        if backbone is None or not is_transformers_class(backbone, (backbone_class,)):
            return None
        if not isinstance(getattr(backbone, "layernorm", None), nn.LayerNorm):
            return None  # applied to the kept rows only: it must work row by row
        layers = self._current_layers()
        if not layers:
            return None
        last = layers[-1]
        if self.legacy_layout:
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

    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        with model_lock(self.model):
            configs = {id(self.config): self.config}
            for module in self.model.modules():
                cfg = getattr(module, "config", None)
                if cfg is not None and hasattr(cfg, "_attn_implementation"):
                    configs[id(cfg)] = cfg
            outer = self._output_attentions  # nested: the outer switch stays on
            with attribute_switched(self.model, configs.values(), "_attn_implementation", "eager"):
                self._output_attentions = True
                try:
                    yield
                finally:
                    self._output_attentions = outer
