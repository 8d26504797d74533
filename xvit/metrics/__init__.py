"""Evaluation metrics: one file per metric, all behind one registry.

Each metric is a class (declaring ``higher_is_better``) with a functional twin:
:class:`Insertion` / :func:`insertion`, :class:`Deletion` / :func:`deletion`,
:class:`PointingGame` / :func:`pointing_game`, :class:`EnergyPointingGame` /
:func:`energy_pointing_game`. Third-party metrics register through the entry-point group
``xvit.metrics``.

Example:
    >>> from xvit.metrics import get_metric, list_metrics
    >>> [(n, get_metric(n).higher_is_better) for n in ("insertion", "deletion")]
    [('insertion', True), ('deletion', False)]
"""

from __future__ import annotations

from ._base import Batch, Metric, MetricResult, nanmean
from ._registration import get_metric, list_metrics, metrics, register_metric
from .deletion import Deletion, deletion
from .energy_pointing_game import EnergyPointingGame, energy_pointing_game
from .insertion import Insertion, insertion
from .pointing_game import PointingGame, pointing_game

__all__ = [
    "Batch",
    "Deletion",
    "EnergyPointingGame",
    "Insertion",
    "Metric",
    "MetricResult",
    "PointingGame",
    "deletion",
    "energy_pointing_game",
    "get_metric",
    "insertion",
    "list_metrics",
    "metrics",
    "nanmean",
    "pointing_game",
    "register_metric",
]
