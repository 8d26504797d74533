"""Evaluation metrics: one file per metric, all behind one registry.

Each metric is a class (declaring ``higher_is_better``) in a file of its own with a
functional twin in :mod:`xvit.metrics.functional`: :class:`Insertion` /
:func:`~xvit.metrics.functional.insertion`, :class:`Deletion` / ``deletion``,
:class:`PointingGame` / ``pointing_game``, :class:`EnergyPointingGame` /
``energy_pointing_game``, :class:`MPRT` / ``mprt``. ``xvit.metrics.insertion`` is the
module of that file (calling it as the function still works, with a DeprecationWarning).
Third-party metrics register through the entry-point group ``xvit.metrics``; the registry is
``metric_registry`` (also ``metrics``).

Example:
    >>> from xvit.metrics import get_metric, list_metrics
    >>> [(n, get_metric(n).higher_is_better) for n in ("insertion", "deletion")]
    [('insertion', True), ('deletion', False)]
"""

from __future__ import annotations

from . import deletion, energy_pointing_game, functional, insertion, mprt, pointing_game
from ._base import Batch, Metric, MetricResult, nanmean
from ._registration import get_metric, list_metrics, metrics, register_metric
from ._twin_modules import make_callable
from .deletion import Deletion
from .energy_pointing_game import EnergyPointingGame
from .insertion import Insertion
from .mprt import MPRT, MPRTResult
from .pointing_game import PointingGame

#: Every metric, by name (the same registry as ``metrics``).
metric_registry = metrics

make_callable(deletion, energy_pointing_game, insertion, mprt, pointing_game)

__all__ = [
    "MPRT",
    "Batch",
    "Deletion",
    "EnergyPointingGame",
    "Insertion",
    "MPRTResult",
    "Metric",
    "MetricResult",
    "PointingGame",
    "deletion",
    "energy_pointing_game",
    "functional",
    "get_metric",
    "insertion",
    "list_metrics",
    "metric_registry",
    "metrics",
    "mprt",
    "nanmean",
    "pointing_game",
    "register_metric",
]
