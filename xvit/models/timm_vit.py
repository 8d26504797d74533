"""Adapter for timm's ``VisionTransformer`` family (ViT, DeiT, DeiT-distilled, registers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._errors import UnsupportedModelError
from ._base import AttentionSource, BlockSources, Geometry, ModelAdapter, QKVSource, model_lock
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def _is_timm_vit(model: object) -> bool:
    return any(
        cls.__name__ == "VisionTransformer" and cls.__module__.startswith("timm.")
        for cls in type(model).__mro__
    )


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class TimmViTAdapter(ModelAdapter):
    """timm ``VisionTransformer`` and subclasses (``VisionTransformerDistilled``).

    Reads the geometry from ``num_prefix_tokens`` and ``patch_embed``; captures q/k/v from
    each block's fused ``attn.qkv`` projection and attention probabilities from
    ``attn.attn_drop`` (with ``fused_attn`` switched off for the call).
    """

    framework = "timm"
    description = (
        "timm VisionTransformer (ViT, DeiT, DeiT-distilled, register tokens, any global_pool)"
    )

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
        return _is_timm_vit(model)

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
            patch_size=_pair(pe.patch_size),
            image_size=_pair(pe.img_size),
            in_chans=in_chans,
            dynamic_size=bool(getattr(m, "dynamic_img_size", False)),
        )

    @property
    def preprocessing(self) -> Preprocessing:
        from ._loading import attached_preprocessing

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

    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        # under the model's lock: two threads must not save and restore each other's flags
        with model_lock(self.model):
            saved = [(a, bool(getattr(a, "fused_attn", False))) for a in self._attns]
            try:
                for attn, _ in saved:
                    attn.fused_attn = False
                yield
            finally:
                for attn, flag in saved:
                    attn.fused_attn = flag


def _tensor_or_none(output: Any) -> torch.Tensor | None:
    return output if isinstance(output, torch.Tensor) else None
