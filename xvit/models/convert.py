"""Move the weights of a plain ViT or a DeiT-distilled classifier between timm and HuggingFace.

Two forms of the same network are supported:

* plain ViT: timm ``VisionTransformer`` (CLS token, ``global_pool="token"``) and HF
  ``ViTForImageClassification``;
* DeiT-distilled: timm ``VisionTransformerDistilled`` (``head`` and ``head_dist``) and HF
  ``DeiTForImageClassificationWithTeacher`` (``cls_classifier`` and ``distillation_classifier``).

The target is built from the source's geometry and every parameter is copied module by module;
timm's fused ``qkv`` projection is split into (or assembled from) HF's separate query, key and
value projections. HF models of both module layouts are read and written: transformers 5.x
(``layers[i].attention.q_proj``, ``mlp.fc1``) and 4.x (``encoder.layer[i].attention.attention.
query``, ``intermediate.dense``). Training-only regularisation (stochastic depth, head dropout)
is not carried over; the converted model computes the same function in eval mode.

References:
    A. Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; H. Touvron et al.,
    "Training data-efficient image transformers & distillation through attention", ICML 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any

import torch
from torch import nn

from .._errors import UnsupportedModelError
from ._base import Geometry, ModelAdapter
from ._preprocessing import attach_preprocessing
from .hf_vit import HFViTAdapter
from .timm_vit import TimmViTAdapter, is_timm_vit

_HF_PLAIN = "ViTForImageClassification"
_HF_TEACHER = "DeiTForImageClassificationWithTeacher"
_TIMM_PLAIN = "VisionTransformer"
_TIMM_DISTILLED = "VisionTransformerDistilled"


@dataclass(frozen=True)
class _Spec:
    """What a converted model must match: the source's geometry (as its adapter reads it) and
    settings."""

    distilled: bool
    geometry: Geometry
    mlp_size: int
    num_classes: int
    qkv_bias: bool
    eps: float
    hidden_dropout: float = 0.0
    attn_dropout: float = 0.0


#: The settings both frameworks take as they are, under each one's name: where :class:`_Spec`
#: keeps it, timm's ``VisionTransformer`` argument, HF's ``ViTConfig``/``DeiTConfig`` field.
#: The builders set the rest (sizes, MLP width, norm eps, dropout), which the two express
#: differently.
_SHARED_SETTINGS = (
    ("geometry.hidden_size", "embed_dim", "hidden_size"),
    ("geometry.num_blocks", "depth", "num_hidden_layers"),
    ("geometry.num_heads", "num_heads", "num_attention_heads"),
    ("geometry.in_chans", "in_chans", "num_channels"),
    ("num_classes", "num_classes", "num_labels"),
    ("qkv_bias", "qkv_bias", "qkv_bias"),
    ("attn_dropout", "attn_drop_rate", "attention_probs_dropout_prob"),
)


def _shared_settings(spec: _Spec, framework: str) -> dict[str, Any]:
    """The :data:`_SHARED_SETTINGS` of ``spec`` under the names of ``framework``
    ("timm" or "hf")."""
    column = ("timm", "hf").index(framework) + 1
    return {row[column]: attrgetter(row[0])(spec) for row in _SHARED_SETTINGS}


@dataclass
class _Layer:
    """One transformer block's weight-carrying modules."""

    norm1: nn.Module
    qkv: tuple[nn.Module, ...]  # one fused [q | k | v] Linear (timm) or three (HF)
    proj: nn.Module
    norm2: nn.Module
    fc1: nn.Module
    fc2: nn.Module


@dataclass
class _Parts:
    """Every weight-carrying piece of a ViT, named the same for both frameworks."""

    patch: nn.Module
    tokens: list[nn.Parameter]  # CLS, then the distillation token if any
    pos_embed: nn.Parameter
    layers: list[_Layer]
    norm: nn.Module
    heads: list[nn.Module]  # CLS head, then the distillation head if any
    written: set[int] = field(default_factory=set)


# --- public ---------------------------------------------------------------------------------
def timm_to_hf(model: nn.Module) -> nn.Module:
    """The HuggingFace twin of a timm plain ViT or DeiT-distilled classifier.

    A ``VisionTransformer`` becomes a ``ViTForImageClassification`` and a
    ``VisionTransformerDistilled`` a ``DeiTForImageClassificationWithTeacher``, with the same
    hidden size, depth, heads, MLP width, patch and image size, classes, qkv bias and
    layer-norm eps, the same weights, dtype, device, train/eval mode, preprocessing and class
    names (timm's label names or ImageNet names become ``config.id2label``).

    Args:
        model: A timm ``VisionTransformer`` with a CLS token and ``global_pool="token"``, or a
            ``VisionTransformerDistilled``.

    Returns:
        A new HF model; ``model`` is left untouched.

    Raises:
        UnsupportedModelError: ``model`` is not such a model or uses a variant HF ViT/DeiT
            cannot express (register tokens, average pooling, qk-norm, layer scale, ...).

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8).eval()
        >>> hf = xvit.timm_to_hf(m)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> torch.allclose(m(x), hf(pixel_values=x).logits, atol=1e-5)
        True
    """
    target = _build_hf(_timm_spec(model))
    return _convert(TimmViTAdapter(model), _timm_parts(model), target, _hf_parts(target))


def hf_to_timm(model: nn.Module) -> nn.Module:
    """The timm twin of a HuggingFace ViT or DeiT-with-teacher classifier.

    A ``ViTForImageClassification`` becomes a timm ``VisionTransformer`` and a
    ``DeiTForImageClassificationWithTeacher`` a ``VisionTransformerDistilled``; transformers
    4.x and 5.x module layouts are both read.

    Args:
        model: A ``ViTForImageClassification`` or ``DeiTForImageClassificationWithTeacher``.

    Returns:
        A new timm model with the same weights, dtype, device, mode, preprocessing and class
        names (``config.id2label``, unless HF's placeholders, becomes
        ``pretrained_cfg["label_names"]``).

    Raises:
        UnsupportedModelError: ``model`` is not one of these, or uses a setting timm's ViT
            cannot express (an activation other than exact GELU, a classifier-less model).

    Example:
        >>> import torch, xvit
        >>> from transformers import ViTConfig, ViTForImageClassification
        >>> cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                 intermediate_size=64, image_size=32, patch_size=8,
        ...                 id2label={0: "cat", 1: "dog"})
        >>> hf = ViTForImageClassification(cfg).eval()
        >>> m = xvit.hf_to_timm(hf)
        >>> type(m).__name__, xvit.get_adapter(m).class_names()  # the class names come along
        ('VisionTransformer', ('cat', 'dog'))
        >>> x = torch.randn(1, 3, 32, 32)
        >>> torch.allclose(m(x), hf(pixel_values=x).logits, atol=1e-5)
        True
    """
    target = _build_timm(_hf_spec(model))
    return _convert(HFViTAdapter(model), _hf_parts(model), target, _timm_parts(target))


# --- reading a timm model -------------------------------------------------------------------
def _timm_kind(model: object) -> str:
    if not isinstance(model, nn.Module) or not is_timm_vit(model):
        hint = " (use hf_to_timm for HuggingFace models)" if HFViTAdapter.matches(model) else ""
        raise UnsupportedModelError(
            f"timm_to_hf takes a timm VisionTransformer or VisionTransformerDistilled, got "
            f"{type(model).__module__}.{type(model).__name__}{hint}"
        )
    name = type(model).__name__
    if name not in (_TIMM_PLAIN, _TIMM_DISTILLED):
        raise UnsupportedModelError(
            f"timm_to_hf converts timm's VisionTransformer and VisionTransformerDistilled, not "
            f"the subclass {name}"
        )
    return name


def _timm_spec(model: nn.Module) -> _Spec:
    kind = _timm_kind(model)
    m: Any = model
    geo = TimmViTAdapter(model).geometry
    problems = _timm_problems(m)
    if problems:
        raise UnsupportedModelError(
            f"cannot convert this timm {kind} to HuggingFace: {'; '.join(problems)}. "
            f"Only plain ViT (CLS token, global_pool='token') and DeiT-distilled models convert"
        )
    block = m.blocks[0]
    return _Spec(
        distilled=kind == _TIMM_DISTILLED,
        geometry=geo,
        mlp_size=int(block.mlp.fc1.out_features),
        num_classes=int(m.num_classes),
        qkv_bias=block.attn.qkv.bias is not None,
        eps=float(block.norm1.eps),
        hidden_dropout=float(block.attn.proj_drop.p),
        attn_dropout=float(block.attn.attn_drop.p),
    )


def _timm_problems(m: Any) -> list[str]:
    """Every setting of a timm ViT that HF ViT/DeiT cannot express, in words."""
    problems = []
    if getattr(m, "cls_token", None) is None:
        problems.append("it has no class token (class_token=False)")
    if int(getattr(m, "num_reg_tokens", 0) or 0) or getattr(m, "reg_token", None) is not None:
        problems.append(f"it has {int(m.num_reg_tokens)} register tokens (reg_tokens)")
    if m.global_pool != "token":
        problems.append(f"it pools with global_pool={m.global_pool!r}, not 'token'")
    if getattr(m, "attn_pool", None) is not None:
        problems.append("it has an attention-pooling head")
    if getattr(m, "pos_embed", None) is None:
        problems.append("it has no learned position embedding")
    if getattr(m, "no_embed_class", False):
        problems.append("its position embedding skips the prefix tokens (no_embed_class=True)")
    for name in ("norm_pre", "fc_norm"):
        if not isinstance(getattr(m, name, None), nn.Identity):
            problems.append(f"it has a {name} layer ({'pre_norm' if name == 'norm_pre' else name})")
    if not _is_layer_norm(m.norm) and isinstance(getattr(m, "fc_norm", None), nn.Identity):
        problems.append("it has no final LayerNorm (final_norm=False or another norm)")
    pe = m.patch_embed
    if not isinstance(getattr(pe, "proj", None), nn.Conv2d) or not isinstance(
        getattr(pe, "norm", None), nn.Identity
    ):
        problems.append("its patch embedding is not a plain convolution (embed_norm_layer?)")
    if getattr(pe, "dynamic_img_pad", False):
        problems.append("it pads inputs to the patch size (dynamic_img_pad=True)")
    heads = [m.head] + ([m.head_dist] if hasattr(m, "head_dist") else [])
    if not all(isinstance(h, nn.Linear) for h in heads):
        problems.append("it has no linear classifier head (num_classes=0)")
    eps = {float(m.norm.eps)} if _is_layer_norm(m.norm) else set()
    where: dict[str, list[int]] = {}
    for i, block in enumerate(m.blocks):
        for problem in _timm_block_problems(block, m.embed_dim):
            where.setdefault(problem, []).append(i)
        eps |= {float(n.eps) for n in (block.norm1, block.norm2) if _is_layer_norm(n)}
    for problem, blocks in where.items():
        at = "every block" if len(blocks) == len(m.blocks) else f"blocks {blocks}"
        problems.append(f"{problem} ({at})")
    if len(eps) > 1:
        problems.append(f"its LayerNorms use different eps values {sorted(eps)}")
    return problems


def _timm_block_problems(block: Any, dim: int) -> list[str]:
    out = []
    if type(block).__name__ != "Block":
        return [f"it is a {type(block).__name__}, not timm's pre-norm Block"]
    attn, mlp = block.attn, block.mlp
    if type(attn).__name__ != "Attention" or not isinstance(getattr(attn, "qkv", None), nn.Linear):
        return [f"its attention is a {type(attn).__name__}, not timm's Attention"]
    if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
        out.append("qk_norm is on")
    if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
        out.append("scale_attn_norm is on")
    if getattr(attn, "gate", None) is not None:
        out.append("the attention output is gated")
    if attn.qkv.out_features != 3 * dim or attn.proj.out_features != dim:
        out.append("its attention width differs from the embedding width (attn_head_dim)")
    if not (isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)):
        out.append("layer scale is on (init_values)")
    if type(mlp).__name__ != "Mlp" or not isinstance(getattr(mlp, "fc1", None), nn.Linear):
        out.append(f"its MLP is a {type(mlp).__name__}, not timm's Mlp")
    else:
        if not isinstance(mlp.norm, nn.Identity):
            out.append("scale_mlp_norm is on")
        act = mlp.act
        if type(act).__name__ != "GELU" or getattr(act, "approximate", "none") != "none":
            out.append(f"its activation is {act!r}, not exact GELU")
    if not (_is_layer_norm(block.norm1) and _is_layer_norm(block.norm2)):
        out.append("its norms are not affine LayerNorms")
    return out


def _is_layer_norm(module: object) -> bool:
    return (
        isinstance(module, nn.LayerNorm)
        and module.weight is not None
        and module.bias is not None
        and len(module.normalized_shape) == 1
    )


def _timm_parts(model: nn.Module) -> _Parts:
    m: Any = model
    distilled = hasattr(m, "dist_token")
    return _Parts(
        patch=m.patch_embed.proj,
        tokens=[m.cls_token] + ([m.dist_token] if distilled else []),
        pos_embed=m.pos_embed,
        layers=[
            _Layer(
                norm1=b.norm1,
                qkv=(b.attn.qkv,),
                proj=b.attn.proj,
                norm2=b.norm2,
                fc1=b.mlp.fc1,
                fc2=b.mlp.fc2,
            )
            for b in m.blocks
        ],
        norm=m.norm,
        heads=[m.head] + ([m.head_dist] if distilled else []),
    )


def _build_timm(spec: _Spec) -> nn.Module:
    from timm.layers import LayerNorm
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    geo = spec.geometry
    cls = VisionTransformerDistilled if spec.distilled else VisionTransformer
    return cls(
        **_shared_settings(spec, "timm"),
        img_size=geo.image_size,
        patch_size=geo.patch_size,
        global_pool="token",
        mlp_ratio=_mlp_ratio(spec.mlp_size, geo.hidden_size),
        norm_layer=partial(LayerNorm, eps=spec.eps),
        pos_drop_rate=spec.hidden_dropout,
        proj_drop_rate=spec.hidden_dropout,
    )


def _mlp_ratio(mlp_size: int, hidden: int) -> float:
    """A float ratio that timm's ``int(hidden * ratio)`` turns back into ``mlp_size``."""
    ratio = mlp_size / hidden
    for _ in range(4):
        if int(hidden * ratio) == mlp_size:
            return ratio
        ratio = math.nextafter(ratio, math.inf)
    raise UnsupportedModelError(
        f"timm cannot build an MLP of width {mlp_size} for hidden size {hidden}"
    )


# --- reading a HuggingFace model ------------------------------------------------------------
def _hf_kind(model: object) -> str:
    if not isinstance(model, nn.Module) or not HFViTAdapter.matches(model):
        hint = " (use timm_to_hf for timm models)" if is_timm_vit(model) else ""
        raise UnsupportedModelError(
            f"hf_to_timm takes a HuggingFace {_HF_PLAIN} or {_HF_TEACHER}, got "
            f"{type(model).__module__}.{type(model).__name__}{hint}"
        )
    names = {c.__name__ for c in type(model).__mro__}
    for kind in (_HF_TEACHER, _HF_PLAIN):
        if kind in names:
            return kind
    raise UnsupportedModelError(
        f"cannot convert a {type(model).__name__} to timm: it classifies from the CLS token "
        f"alone yet carries a distillation token, which no timm model does; convert a "
        f"{_HF_PLAIN} or a {_HF_TEACHER} instead"
    )


def _hf_spec(model: nn.Module) -> _Spec:
    kind = _hf_kind(model)
    adapter = HFViTAdapter(model)
    geo = adapter.geometry
    cfg = adapter.config
    problems = []
    act = getattr(cfg, "hidden_act", "gelu")
    if act != "gelu":
        problems.append(f"hidden_act={act!r} (timm's ViT uses exact GELU, 'gelu')")
    parts = _hf_parts(model)
    if not all(isinstance(h, nn.Linear) for h in parts.heads):
        problems.append("it has no linear classifier (num_labels=0)")
    if problems:
        raise UnsupportedModelError(f"cannot convert this {kind} to timm: {'; '.join(problems)}")
    first = parts.layers[0]
    return _Spec(
        distilled=kind == _HF_TEACHER,
        geometry=geo,
        mlp_size=int(first.fc1.out_features),  # type: ignore[arg-type]
        num_classes=adapter.num_classes,
        qkv_bias=first.qkv[0].bias is not None,
        eps=float(first.norm1.eps),  # type: ignore[arg-type]
        hidden_dropout=float(getattr(cfg, "hidden_dropout_prob", 0.0)),
        attn_dropout=float(getattr(cfg, "attention_probs_dropout_prob", 0.0)),
    )


def _submodule(root: nn.Module, paths: tuple[str, ...], what: str) -> nn.Module:
    for path in paths:
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    raise UnsupportedModelError(
        f"this HuggingFace layer has no {what} (looked for {', '.join(paths)}); its structure "
        f"was modified"
    )


def _hf_parts(model: nn.Module) -> _Parts:
    adapter = HFViTAdapter(model)
    emb: Any = adapter.backbone.embeddings
    layers = []
    for layer, block in zip(adapter.layers, adapter.blocks()):
        layers.append(
            _Layer(
                norm1=block.norm1,
                qkv=block.qkv.modules,
                proj=_submodule(layer, ("attention.o_proj", "attention.output.dense"), "o_proj"),
                norm2=_submodule(layer, ("layernorm_after",), "layernorm_after"),
                fc1=_submodule(layer, ("mlp.fc1", "intermediate.dense"), "mlp.fc1"),
                fc2=_submodule(layer, ("mlp.fc2", "output.dense"), "mlp.fc2"),
            )
        )
    m: Any = model
    teacher = hasattr(m, "distillation_classifier")
    dist = getattr(emb, "distillation_token", None)
    return _Parts(
        patch=emb.patch_embeddings.projection,
        tokens=[emb.cls_token] + ([dist] if dist is not None else []),
        pos_embed=emb.position_embeddings,
        layers=layers,
        norm=adapter.backbone.layernorm,  # type: ignore[arg-type]
        heads=[m.cls_classifier, m.distillation_classifier] if teacher else [m.classifier],
    )


def _build_hf(spec: _Spec) -> nn.Module:
    from transformers import (
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        ViTConfig,
        ViTForImageClassification,
    )

    def size(pair: tuple[int, int]) -> int | list[int]:
        return pair[0] if pair[0] == pair[1] else list(pair)

    geo = spec.geometry
    kwargs: dict[str, Any] = dict(
        **_shared_settings(spec, "hf"),
        image_size=size(geo.image_size),
        patch_size=size(geo.patch_size),
        intermediate_size=spec.mlp_size,
        hidden_act="gelu",
        hidden_dropout_prob=spec.hidden_dropout,
        layer_norm_eps=spec.eps,
    )
    if spec.distilled:
        return DeiTForImageClassificationWithTeacher(DeiTConfig(**kwargs))
    return ViTForImageClassification(ViTConfig(**kwargs))


# --- copying --------------------------------------------------------------------------------
def _qkv_tensors(modules: tuple[nn.Module, ...]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of q, k and v, splitting a fused projection."""
    if len(modules) == 3:
        return [(m.weight, m.bias) for m in modules]  # type: ignore[misc]
    fused: Any = modules[0]
    weights = fused.weight.chunk(3, dim=0)
    biases = fused.bias.chunk(3, dim=0) if fused.bias is not None else (None,) * 3
    return list(zip(weights, biases))


def _put(parts: _Parts, dst: torch.Tensor | None, src: torch.Tensor | None, what: str) -> None:
    """Copy ``src`` into the parameter ``dst``; a missing source bias becomes zeros."""
    if dst is None:
        if src is not None and bool(src.detach().ne(0).any()):
            raise UnsupportedModelError(
                f"the target model has no {what}, the source a non-zero one"
            )
        return
    if src is not None and tuple(src.shape) != tuple(dst.shape):
        raise UnsupportedModelError(
            f"{what}: source shape {tuple(src.shape)} does not fit target {tuple(dst.shape)}"
        )
    with torch.no_grad():
        if src is None:
            dst.zero_()
        else:
            dst.copy_(src.detach())
    parts.written.add(id(dst))


def _put_linear(parts: _Parts, dst: Any, src: Any, what: str) -> None:
    _put(parts, dst.weight, src.weight, f"{what}.weight")
    _put(parts, dst.bias, src.bias, f"{what}.bias")


def _transfer(src: _Parts, dst: _Parts) -> None:
    """Copy every weight of ``src`` into ``dst`` (same architecture, other framework)."""
    _put_linear(dst, dst.patch, src.patch, "patch embedding")
    for i, (d, s) in enumerate(zip(dst.tokens, src.tokens)):
        _put(dst, d, s, ("class", "distillation")[i] + " token")
    _put(dst, dst.pos_embed, src.pos_embed, "position embedding")
    for i, (d_layer, s_layer) in enumerate(zip(dst.layers, src.layers)):
        q_k_v = _qkv_tensors(s_layer.qkv)
        if len(d_layer.qkv) == 3:
            for name, module, (w, b) in zip("qkv", d_layer.qkv, q_k_v):
                _put(dst, module.weight, w, f"block {i} {name}.weight")  # type: ignore[arg-type]
                _put(dst, module.bias, b, f"block {i} {name}.bias")  # type: ignore[arg-type]
        else:
            fused: Any = d_layer.qkv[0]
            _put(dst, fused.weight, torch.cat([w for w, _ in q_k_v]), f"block {i} qkv.weight")
            biases = [b for _, b in q_k_v]
            bias = None if any(b is None for b in biases) else torch.cat(biases)  # type: ignore[arg-type]
            _put(dst, fused.bias, bias, f"block {i} qkv.bias")
        for name in ("norm1", "proj", "norm2", "fc1", "fc2"):
            _put_linear(dst, getattr(d_layer, name), getattr(s_layer, name), f"block {i} {name}")
    _put_linear(dst, dst.norm, src.norm, "final norm")
    for i, (d_head, s_head) in enumerate(zip(dst.heads, src.heads)):
        _put_linear(dst, d_head, s_head, ("head", "distillation head")[i])


def _convert(source: ModelAdapter, src: _Parts, target: nn.Module, dst: _Parts) -> nn.Module:
    """Copy every weight of ``src`` into ``dst`` (the parts of ``target``), check that every
    target parameter was filled, and give ``target`` the source's device, dtype, train/eval
    mode, preprocessing and class names."""
    _transfer(src, dst)
    missing = [name for name, p in target.named_parameters() if id(p) not in dst.written]
    if missing:
        raise UnsupportedModelError(
            f"the converted {type(target).__name__} has parameters with no source: "
            f"{', '.join(missing)}"
        )
    model = source.model
    ref = next(model.parameters())
    target = target.to(device=ref.device, dtype=ref.dtype)
    target.train(model.training)
    attach_preprocessing(target, source.preprocessing)
    names = source.class_names()
    if names is not None:
        _set_class_names(target, names)
    return target


def _set_class_names(model: nn.Module, names: tuple[str, ...]) -> None:
    """Write class names where the model's framework keeps them: HF's ``config.id2label``
    (and ``label2id``), timm's ``pretrained_cfg["label_names"]``."""
    config: Any = getattr(model, "config", None)
    if config is not None:
        config.id2label = dict(enumerate(names))
        config.label2id = {name: i for i, name in reversed(list(enumerate(names)))}
        return
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(label_names=names, num_classes=len(names))
    model.pretrained_cfg = cfg  # type: ignore[assignment]
