"""Model adapters: one interface over timm and HuggingFace ViT-family classifiers."""

from __future__ import annotations

from . import zoo  # noqa: F401  (registers the shipped models' aliases)
from ._base import (
    AttentionSource,
    BlockSources,
    Geometry,
    ModelAdapter,
    QKVSource,
    TokenLayout,
    inherits,
    model_lock,
)
from ._capture import Capture, TokenSubset
from ._family import Family, FamilyAdapter
from ._guard import hook_counts, preserved_state
from ._loading import load_checkpoint, load_model, model_aliases, save_checkpoint
from ._lookup import adapters, get_adapter, supported_models
from ._preprocessing import Preprocessing, attach_preprocessing
from ._zero_shot import ZeroShotClassifier, zero_shot
from .convert import hf_to_timm, timm_to_hf
from .hf_beit import HFBeitAdapter
from .hf_dinov2 import HFDinov2Adapter
from .hf_vit import HFViTAdapter
from .hf_zero_shot import HFZeroShotAdapter
from .open_clip_zero_shot import OpenClipZeroShotAdapter
from .timm_eva_beit import TimmBeitAdapter, TimmEvaAdapter
from .timm_vit import TimmViTAdapter
from .torchvision_vit import TorchvisionViTAdapter

__all__ = [
    "AttentionSource",
    "BlockSources",
    "Capture",
    "Family",
    "FamilyAdapter",
    "Geometry",
    "HFBeitAdapter",
    "HFDinov2Adapter",
    "HFViTAdapter",
    "HFZeroShotAdapter",
    "ModelAdapter",
    "OpenClipZeroShotAdapter",
    "Preprocessing",
    "QKVSource",
    "TimmBeitAdapter",
    "TimmEvaAdapter",
    "TimmViTAdapter",
    "TokenLayout",
    "TokenSubset",
    "TorchvisionViTAdapter",
    "ZeroShotClassifier",
    "adapters",
    "attach_preprocessing",
    "get_adapter",
    "hf_to_timm",
    "hook_counts",
    "inherits",
    "load_checkpoint",
    "load_model",
    "model_aliases",
    "model_lock",
    "preserved_state",
    "save_checkpoint",
    "supported_models",
    "timm_to_hf",
    "zero_shot",
]
