"""Which adapter explains a model: the adapter registry, asked in a declared order.

The adapters themselves never import this module; loading and conversion do, to check a
model or to read it through its adapter.
"""

from __future__ import annotations

from torch import nn

from .._errors import UnsupportedModelError
from .._registry import Registry
from ._base import ModelAdapter
from .hf_beit import HFBeitAdapter
from .hf_dinov2 import HFDinov2Adapter
from .hf_vit import HFViTAdapter
from .hf_zero_shot import HFZeroShotAdapter
from .open_clip_zero_shot import OpenClipZeroShotAdapter
from .timm_eva_beit import TimmBeitAdapter, TimmEvaAdapter
from .timm_vit import TimmViTAdapter
from .torchvision_vit import TorchvisionViTAdapter

#: Adapter classes by name; plugins through the ``xvit.adapters`` entry points.
#: :func:`get_adapter` asks them in :func:`adapter_order`.
adapters: Registry[type[ModelAdapter]] = Registry("model adapter", group="xvit.adapters")
adapters.register("hf", HFViTAdapter)
adapters.register("hf-beit", HFBeitAdapter)
adapters.register("hf-dinov2", HFDinov2Adapter)
adapters.register("hf-zero-shot", HFZeroShotAdapter)
adapters.register("open-clip-zero-shot", OpenClipZeroShotAdapter)
adapters.register("timm", TimmViTAdapter)
adapters.register("timm-beit", TimmBeitAdapter)
adapters.register("timm-eva", TimmEvaAdapter)
adapters.register("torchvision", TorchvisionViTAdapter)


def adapter_order() -> list[type[ModelAdapter]]:
    """The registered adapter classes in the order :func:`get_adapter` asks them: by their
    declared ``priority`` (lower first), then by registered name.

    Example:
        >>> adapter_order()[0].__name__
        'HFViTAdapter'
    """
    ranked = sorted(adapters.items(), key=lambda item: (getattr(item[1], "priority", 0), item[0]))
    return [cls for _, cls in ranked]


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
        for cls in adapter_order():
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
    return "; ".join(cls.description for cls in adapter_order())
