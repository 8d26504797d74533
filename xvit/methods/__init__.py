"""Explanation methods: one file per method, all behind one registry."""

from __future__ import annotations

from . import attention as _attention  # noqa: F401  (registers the built-in)
from . import gae as _gae  # noqa: F401  (registers the built-in)
from . import gradcam as _gradcam  # noqa: F401  (registers the built-in)
from . import gradmask as _gradmask  # noqa: F401  (registers the built-in)
from . import random_map as _random_map  # noqa: F401  (registers the built-in)
from . import rise as _rise  # noqa: F401  (registers the built-in)
from . import rollout as _rollout  # noqa: F401  (registers the built-in)
from . import vitcx as _vitcx  # noqa: F401  (registers the built-in)
from ._base import Cost, Explainer
from ._registration import get_method, list_methods, methods, register_method
from ._scoring import score_masks

__all__ = [
    "Cost",
    "Explainer",
    "get_method",
    "list_methods",
    "methods",
    "register_method",
    "score_masks",
]
