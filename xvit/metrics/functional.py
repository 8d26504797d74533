"""The functional twins of the metrics: one function per metric, the same score as its class.

Example:
    >>> import torch
    >>> from xvit.metrics.functional import pointing_game
    >>> saliency = torch.zeros(1, 4, 4); saliency[0, 1, 2] = 1.0
    >>> pointing_game(saliency, [[(8, 4, 12, 8)]], size=(16, 16), tolerance=0.5)
    tensor([1.], dtype=torch.float64)
"""

from __future__ import annotations

from .average_drop import average_drop
from .complexity import complexity
from .deletion import deletion
from .energy_pointing_game import energy_pointing_game
from .faithfulness_correlation import faithfulness_correlation
from .increase_in_confidence import increase_in_confidence
from .infidelity import infidelity
from .insertion import insertion
from .mprt import mprt
from .pointing_game import pointing_game
from .road import road
from .sensitivity_max import sensitivity_max
from .sparseness import sparseness
from .token_perturbation import token_perturbation

__all__ = [
    "average_drop",
    "complexity",
    "deletion",
    "energy_pointing_game",
    "faithfulness_correlation",
    "increase_in_confidence",
    "infidelity",
    "insertion",
    "mprt",
    "pointing_game",
    "road",
    "sensitivity_max",
    "sparseness",
    "token_perturbation",
]
