"""xvit: explain the decisions of Vision Transformers.

Example:
    >>> import timm, torch, xvit
    >>> model = timm.create_model("vit_tiny_patch16_224", num_classes=4, depth=3,
    ...                           img_size=32, patch_size=8)
    >>> explanation = xvit.explain("gradmask", model, torch.randn(1, 3, 32, 32))
    >>> explanation.map.shape
    torch.Size([1, 4, 4])
"""

from __future__ import annotations

from ._errors import (
    CaptureError,
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
    ModelOutputError,
    ParameterError,
    UnknownNameError,
    UnsupportedModelError,
    XvitError,
)
from ._inputs import load_image
from .api import explain, make_explainer
from .explanation import Explanation, load_explanation
from .methods import (
    Explainer,
    get_method,
    list_methods,
    method_registry,
    register_method,
    score_masks,
)
from .models import (
    Family,
    FamilyAdapter,
    Geometry,
    ModelAdapter,
    Preprocessing,
    get_adapter,
    hf_to_timm,
    hook_counts,
    load_checkpoint,
    load_model,
    model_aliases,
    save_checkpoint,
    timm_to_hf,
    zero_shot,
)

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "Explainer",
    "Explanation",
    "Family",
    "FamilyAdapter",
    "Geometry",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelAdapter",
    "ModelLoadError",
    "ModelOutputError",
    "ParameterError",
    "Preprocessing",
    "UnknownNameError",
    "UnsupportedModelError",
    "XvitError",
    "__version__",
    "explain",
    "get_adapter",
    "get_method",
    "hf_to_timm",
    "hook_counts",
    "list_methods",
    "load_checkpoint",
    "load_explanation",
    "load_image",
    "load_model",
    "make_explainer",
    "method_registry",
    "model_aliases",
    "register_method",
    "save_checkpoint",
    "score_masks",
    "timm_to_hf",
    "zero_shot",
]
