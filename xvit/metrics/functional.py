"""The functional twins of the metrics: one function per metric, the same score as its class.

Example:
    >>> import torch
    >>> from xvit.metrics.functional import pointing_game
    >>> saliency = torch.zeros(1, 4, 4); saliency[0, 1, 2] = 1.0
    >>> pointing_game(saliency, [[(8, 4, 12, 8)]], size=(16, 16), tolerance=0.5)
    tensor([1.], dtype=torch.float64)
"""

from __future__ import annotations

from .deletion import deletion
from .energy_pointing_game import energy_pointing_game
from .insertion import insertion
from .mprt import mprt
from .pointing_game import pointing_game

__all__ = ["deletion", "energy_pointing_game", "insertion", "mprt", "pointing_game"]
