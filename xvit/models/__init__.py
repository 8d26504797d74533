"""Model adapters: one interface over timm and HuggingFace ViT-family classifiers."""

from __future__ import annotations

from . import zoo  # noqa: F401  (registers the shipped models' aliases)
from ._base import Geometry, ModelAdapter, model_lock
from ._capture import Capture
from ._guard import hook_counts, preserved_state
from ._loading import load_checkpoint, load_model, model_aliases, save_checkpoint
from ._lookup import adapters, get_adapter, supported_models
from ._preprocessing import Preprocessing, attach_preprocessing
from ._zero_shot import ZeroShotClassifier, zero_shot
from .convert import hf_to_timm, timm_to_hf
from .hf_vit import HFViTAdapter
from .timm_vit import TimmViTAdapter

__all__ = [
    "Capture",
    "Geometry",
    "HFViTAdapter",
    "ModelAdapter",
    "Preprocessing",
    "TimmViTAdapter",
    "ZeroShotClassifier",
    "adapters",
    "attach_preprocessing",
    "get_adapter",
    "hf_to_timm",
    "hook_counts",
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
