"""The HuggingFace adapter's last-layer shortcut for the masked forwards.

ViT and DeiT classifiers read only the prefix rows of the last layer's output (CLS, and the
distillation row for the teacher model). :meth:`HFViTAdapter.scoring_logits` therefore runs the
last layer for those rows alone; this module holds the checks that decide when that is exact
(stock classes, no hooks, eval mode) and the row-restricted layer for both module layouts
(transformers 5.x and 4.x).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Classifier class -> (backbone attribute, backbone class, leading rows its head reads)
HEADS: dict[str, tuple[str, str, int]] = {
    "ViTForImageClassification": ("vit", "ViTModel", 1),  # classifier(sequence_output[:, 0])
    "DeiTForImageClassification": ("deit", "DeiTModel", 1),  # classifier(sequence_output[:, 0])
    # mean of cls_classifier(sequence_output[:, 0]) and distillation_classifier([:, 1])
    "DeiTForImageClassificationWithTeacher": ("deit", "DeiTModel", 2),
}

_MODELS = ("transformers.models.vit.", "transformers.models.deit.")


def is_transformers_class(module: object, names: tuple[str, ...]) -> bool:
    """Whether ``module`` is exactly (not a subclass of) a ViT/DeiT class named in ``names``."""
    cls = type(module)
    return cls.__name__ in names and cls.__module__.startswith(_MODELS)


def _linears(module: nn.Module, names: tuple[str, ...]) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def _norms(layer: nn.Module) -> bool:
    return all(
        isinstance(getattr(layer, n, None), nn.LayerNorm)
        for n in ("layernorm_before", "layernorm_after")
    )


def bypassed_modules(layer: nn.Module) -> list[nn.Module] | None:
    """For a stock transformers 5.x ``ViTLayer``/``DeiTLayer``: the modules whose own forward
    the shortcut replaces (the layer and its attention); None for any other layer."""
    attn = getattr(layer, "attention", None)
    if not (
        is_transformers_class(layer, ("ViTLayer", "DeiTLayer"))
        and is_transformers_class(attn, ("ViTAttention", "DeiTAttention"))
        and is_transformers_class(getattr(layer, "mlp", None), ("ViTMLP", "DeiTMLP"))
        and isinstance(getattr(layer, "dropout", None), nn.Dropout)
        and _norms(layer)
        and _linears(attn, ("q_proj", "k_proj", "v_proj", "o_proj"))  # type: ignore[arg-type]
    ):
        return None
    head_dim, scaling = getattr(attn, "head_dim", None), getattr(attn, "scaling", None)
    if not isinstance(head_dim, int) or head_dim <= 0 or not isinstance(scaling, float):
        return None
    widths = {attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features}  # type: ignore[union-attr]
    if len(widths) != 1 or widths.pop() % head_dim or getattr(attn, "is_causal", False):
        return None
    return [layer, attn]  # type: ignore[list-item]


def legacy_bypassed_modules(layer: nn.Module) -> list[nn.Module] | None:
    """:func:`bypassed_modules` for the transformers 4.x layout (``attention.attention.query``,
    eager and SDPA classes)."""
    attn = getattr(layer, "attention", None)
    inner = getattr(attn, "attention", None)
    if not (
        is_transformers_class(layer, ("ViTLayer", "DeiTLayer"))
        and is_transformers_class(
            attn, ("ViTAttention", "ViTSdpaAttention", "DeiTAttention", "DeiTSdpaAttention")
        )
        and is_transformers_class(
            inner,
            (
                "ViTSelfAttention",
                "ViTSdpaSelfAttention",
                "DeiTSelfAttention",
                "DeiTSdpaSelfAttention",
            ),
        )
        and is_transformers_class(
            getattr(attn, "output", None), ("ViTSelfOutput", "DeiTSelfOutput")
        )
        and is_transformers_class(
            getattr(layer, "intermediate", None), ("ViTIntermediate", "DeiTIntermediate")
        )
        and is_transformers_class(getattr(layer, "output", None), ("ViTOutput", "DeiTOutput"))
        and _norms(layer)
        and _linears(inner, ("query", "key", "value"))  # type: ignore[arg-type]
    ):
        return None
    heads = getattr(inner, "num_attention_heads", None)
    size = getattr(inner, "attention_head_size", None)
    if not isinstance(heads, int) or not isinstance(size, int) or heads <= 0 or size <= 0:
        return None
    widths = {inner.query.out_features, inner.key.out_features, inner.value.out_features}  # type: ignore[union-attr]
    if widths != {heads * size} or getattr(inner, "is_causal", False):
        return None
    return [layer, attn, inner]  # type: ignore[list-item]


def bidirectional_mask(config: Any, embeddings: torch.Tensor) -> Any:
    """The attention mask a 5.x ``ViTModel``/``DeiTModel`` builds for an unpadded batch: None
    for eager and SDPA, a ``BlockMask`` for flex attention. Unknown (no ``masking_utils``):
    a placeholder that sends the caller to the plain forward."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:
        return object()
    return create_bidirectional_mask(config=config, inputs_embeds=embeddings, attention_mask=None)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int, scale: float
) -> torch.Tensor:
    """Multi-head attention of T query rows over N key/value rows: B x T x (heads * head_dim)."""
    b, t, n = q.shape[0], q.shape[1], k.shape[1]
    out = F.scaled_dot_product_attention(
        q.view(b, t, -1, head_dim).transpose(1, 2),
        k.view(b, n, -1, head_dim).transpose(1, 2),
        v.view(b, n, -1, head_dim).transpose(1, 2),
        scale=scale,
    )
    return out.transpose(1, 2).reshape(b, t, -1)


def prefix_rows(layer: Any, h: torch.Tensor, keep: int) -> torch.Tensor:
    """A transformers 5.x ``ViTLayer``/``DeiTLayer`` for the first ``keep`` rows (B x keep x D).

    As its forward: ``h + dropout(o_proj(attention(layernorm_before(h))))``, then
    ``h + dropout(mlp(layernorm_after(h)))``; queries from the kept rows, keys and values from
    all rows. Eval only (no attention dropout).
    """
    attn = layer.attention
    y = layer.layernorm_before(h)
    ctx = _attend(
        attn.q_proj(y[:, :keep]), attn.k_proj(y), attn.v_proj(y), attn.head_dim, attn.scaling
    )
    h = layer.dropout(attn.o_proj(ctx)) + h[:, :keep]
    return layer.dropout(layer.mlp(layer.layernorm_after(h))) + h  # type: ignore[no-any-return]


def legacy_prefix_rows(layer: Any, h: torch.Tensor, keep: int) -> torch.Tensor:
    """:func:`prefix_rows` for the transformers 4.x layout: ``attention.attention`` (scaled
    by 1 / sqrt(head size), or its ``scaling`` where set), ``attention.output`` (dense,
    dropout), ``intermediate`` (dense, activation) and ``output`` (dense, dropout, residual)."""
    inner = layer.attention.attention
    size = int(inner.attention_head_size)
    scale = getattr(inner, "scaling", None)
    y = layer.layernorm_before(h)
    ctx = _attend(
        inner.query(y[:, :keep]),
        inner.key(y),
        inner.value(y),
        size,
        float(scale) if isinstance(scale, (int, float)) else size**-0.5,
    )
    h = layer.attention.output(ctx, y[:, :keep]) + h[:, :keep]
    return layer.output(layer.intermediate(layer.layernorm_after(h)), h)  # type: ignore[no-any-return]
