"""Explanation methods: one file per method (``xvit.methods.gradmask``, ...), all behind one
registry, ``xvit.method_registry``.

Shared helpers live in private modules named for what they hold: ``_attention`` (capture and
head fusion), ``_gradients`` (the target-logit gradient pass), ``_layers`` (the ``layer``
parameter), ``_scoring`` (the mask-scoring kernel), ``_pixels`` (input gradients in chunks
and patch pooling of the pixel methods). A method file imports only those, never a sibling
method.
"""

from __future__ import annotations

import sys

# the built-ins register themselves on import
from . import (  # noqa: F401
    attention,
    attnlrp,
    chefer_lrp,
    gae,
    gradcam,
    gradmask,
    integrated_gradients,
    legrad,
    occlusion,
    random_map,
    rise,
    rollout,
    smoothgrad,
    tis,
    vitcx,
)
from ._base import Cost, Explainer
from ._legacy_registry import RegistryPackage
from ._registration import get_method, list_methods, method_registry, register_method
from ._scoring import score_masks

# ``xvit.methods`` used as the registry (its former name) still works, with a warning
sys.modules[__name__].__class__ = RegistryPackage

__all__ = [
    "Cost",
    "Explainer",
    "get_method",
    "list_methods",
    "method_registry",
    "register_method",
    "score_masks",
]
