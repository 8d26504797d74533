"""Adapter for timm's ``VisionTransformer`` family (ViT, DeiT, DeiT-distilled, registers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, BlockSources, Geometry, ModelAdapter, QKVSource, inherits, pair
from ._guard import attribute_switched
from ._labels import timm_class_names
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, attached_preprocessing


def is_timm_vit(model: object) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (or a subclass), without importing
    timm."""
    return inherits(model, "timm", ("VisionTransformer",))


class TimmViTAdapter(ModelAdapter):
    """timm ``VisionTransformer`` and subclasses (``VisionTransformerDistilled``).

    Reads the geometry from ``num_prefix_tokens`` and ``patch_embed``; captures q/k/v from
    each block's fused ``attn.qkv`` projection and attention probabilities from
    ``attn.attn_drop`` (with ``fused_attn`` switched off for the call).

    Example:
        >>> import timm, xvit
        >>> m = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> adapter = xvit.get_adapter(m)
        >>> type(adapter).__name__, adapter.geometry.num_prefix_tokens, adapter.geometry.grid()
        ('TimmViTAdapter', 2, (4, 4))
    """

    framework = "timm"
    description = (
        "timm VisionTransformer (ViT, DeiT, DeiT-distilled, register tokens, any global_pool)"
    )
    priority = 100  # any subclass matches: adapters for narrower families go first

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        blocks = getattr(model, "blocks", None)
        if blocks is None or len(blocks) == 0:
            raise UnsupportedModelError("this timm VisionTransformer has no blocks to explain")
        for i, block in enumerate(blocks):
            attn = getattr(block, "attn", None)
            if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not hasattr(
                attn, "attn_drop"
            ):
                raise UnsupportedModelError(
                    f"block {i} of this timm VisionTransformer ({type(block).__name__}) has no "
                    f"standard attention with a fused qkv projection; xvit supports timm's "
                    f"Block/Attention (vit_*, deit_*) models"
                )

    @classmethod
    def matches(cls, model: object) -> bool:
        return is_timm_vit(model)

    @property
    def _attns(self) -> list[Any]:
        return [block.attn for block in self.model.blocks]  # type: ignore[union-attr]

    @property
    def geometry(self) -> Geometry:
        m: Any = self.model
        attn = self._attns[0]
        pe = m.patch_embed
        in_chans = int(pe.proj.in_channels) if hasattr(pe, "proj") else 3
        return Geometry(
            num_blocks=len(m.blocks),
            num_heads=int(attn.num_heads),
            hidden_size=int(attn.qkv.out_features // 3),
            num_prefix_tokens=int(m.num_prefix_tokens),
            patch_size=pair(pe.patch_size),
            image_size=pair(pe.img_size),
            in_chans=in_chans,
            dynamic_size=bool(getattr(m, "dynamic_img_size", False)),
        )

    @property
    def preprocessing(self) -> Preprocessing:
        attached = attached_preprocessing(self.model)
        if attached is not None:
            return attached
        cfg: Any = getattr(self.model, "pretrained_cfg", None) or {}
        size = self.geometry.image_size
        return Preprocessing(
            size=size,
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)  # type: ignore[arg-type]

    def class_names(self) -> tuple[str, ...] | None:
        """``pretrained_cfg`` label names, else timm's ImageNet names for an ImageNet head."""
        return timm_class_names(self.model, self.num_classes)

    def blocks(self) -> list[BlockSources]:
        out = []
        for block in self.model.blocks:  # type: ignore[union-attr]
            attn = block.attn
            out.append(
                BlockSources(
                    qkv=QKVSource(modules=(attn.qkv,), hidden_size=attn.qkv.out_features // 3),
                    attention=AttentionSource(module=attn.attn_drop, extract=_tensor_or_none),
                    norm1=block.norm1,
                )
            )
        return out

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):  # distilled training mode returns both heads
            out = (out[0] + out[1]) / 2
        return out

    def scoring_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The forward with a shortcut in the last block: when the classifier reads only the
        prefix tokens (``global_pool='token'``, distilled heads), the last block computes
        attention and MLP for those rows alone; keys and values still come from every token.
        Saves about (N - T) / N of one block; same logits up to float rounding."""
        if not self._prefix_only_head():
            return self.forward_logits(x)
        m: Any = self.model
        h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        blocks = list(m.blocks)
        for block in blocks[:-1]:
            h = block(h)
        h = _prefix_rows_of_block(blocks[-1], h, int(m.num_prefix_tokens))
        return self.forward_logits_from_features(m.norm(h))

    def forward_logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_head(features)  # type: ignore[operator]
        if isinstance(out, (tuple, list)):
            out = (out[0] + out[1]) / 2
        return out

    def _prefix_only_head(self) -> bool:
        m: Any = self.model
        if type(m).__name__ not in ("VisionTransformer", "VisionTransformerDistilled"):
            return False  # a subclass may change the forward
        if m.training or int(m.num_prefix_tokens) < 1 or getattr(m, "attn_pool", None) is not None:
            return False
        if type(m).__name__ == "VisionTransformer" and m.global_pool != "token":
            return False
        block = m.blocks[-1]
        return (
            type(block).__name__ == "Block"
            and type(block.attn).__name__ == "Attention"
            and getattr(block.attn, "gate", None) is None
            and not getattr(m, "grad_checkpointing", False)
        )

    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        with attribute_switched(self.model, self._attns, "fused_attn", False):
            yield


def _prefix_rows_of_block(block: Any, x: torch.Tensor, keep: int) -> torch.Tensor:
    """A timm ``Block`` computed for the first ``keep`` query rows only (B x keep x D)."""
    attn = block.attn
    y = block.norm1(x)
    b, n, _ = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q[:, :, :keep]), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, keep, attn.attn_dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    h = x[:, :keep] + block.drop_path1(block.ls1(out))
    return h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))


def _tensor_or_none(output: Any) -> torch.Tensor | None:
    return output if isinstance(output, torch.Tensor) else None
