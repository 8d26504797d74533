"""Model adapters: one interface over timm and HuggingFace ViT-family classifiers."""

from __future__ import annotations

from torch import nn

from .._errors import UnsupportedModelError
from .._registry import Registry
from . import zoo  # noqa: F401  (registers the shipped models' aliases)
from ._base import Geometry, ModelAdapter, model_lock
from ._capture import Capture
from ._guard import hook_counts, preserved_state
from ._loading import (
    attach_preprocessing,
    load_checkpoint,
    load_model,
    model_aliases,
    save_checkpoint,
)
from ._preprocessing import Preprocessing
from .convert import hf_to_timm, timm_to_hf
from .hf_vit import HFViTAdapter
from .timm_vit import TimmViTAdapter

#: Adapter classes, tried in name order; plugins through the ``xvit.adapters`` entry points.
adapters: Registry[type[ModelAdapter]] = Registry("model adapter", group="xvit.adapters")
adapters.register("hf", HFViTAdapter)
adapters.register("timm", TimmViTAdapter)


def get_adapter(model: object) -> ModelAdapter:
    """The adapter for ``model``, chosen by its type.

    Raises:
        UnsupportedModelError: ``model`` is not a supported ViT-family classifier.

    Example:
        >>> import xvit
        >>> type(xvit.get_adapter(xvit.load_model("xvit:digits-vit-hf"))).__name__
        'HFViTAdapter'
    """
    if isinstance(model, ModelAdapter):
        return model
    if isinstance(model, nn.Module):
        for _name, cls in adapters.items():
            if cls.matches(model):
                return cls(model)
    raise UnsupportedModelError(
        f"xvit cannot explain a {type(model).__module__}.{type(model).__name__}: it supports "
        f"{supported_models()}"
    )


def supported_models() -> str:
    """The model families xvit's adapters support, for error messages.

    Example:
        >>> "timm VisionTransformer" in supported_models()
        True
    """
    return "; ".join(cls.description for _, cls in adapters.items())


__all__ = [
    "Capture",
    "Geometry",
    "HFViTAdapter",
    "ModelAdapter",
    "Preprocessing",
    "TimmViTAdapter",
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
    "timm_to_hf",
]
