"""Evaluation metrics: one file per metric, all behind one registry.

Each metric is a class (declaring ``higher_is_better``) in a file of its own with a
functional twin in :mod:`xvit.metrics.functional`: :class:`Insertion` /
:func:`~xvit.metrics.functional.insertion`, :class:`Deletion` / ``deletion``,
:class:`PointingGame` / ``pointing_game``, :class:`EnergyPointingGame` /
``energy_pointing_game``; :class:`ROAD` / ``road``, :class:`FaithfulnessCorrelation` /
``faithfulness_correlation``, :class:`Infidelity` / ``infidelity``, :class:`SensitivityMax` /
``sensitivity_max``, :class:`Sparseness` / ``sparseness``, :class:`Complexity` /
``complexity``, :class:`TokenPerturbation` / ``token_perturbation``, :class:`AverageDrop` /
``average_drop``, :class:`IncreaseInConfidence` / ``increase_in_confidence``, :class:`MPRT` /
``mprt``.
``xvit.metrics.insertion`` is the module of that file (calling it
as the function still works, with a DeprecationWarning). Third-party metrics register
through the entry-point group ``xvit.metrics``; the registry is ``metric_registry`` (also
``metrics``).

Example:
    >>> from xvit.metrics import get_metric, list_metrics
    >>> [(n, get_metric(n).higher_is_better) for n in ("insertion", "deletion")]
    [('insertion', True), ('deletion', False)]
"""

from __future__ import annotations

from . import (
    average_drop,
    complexity,
    deletion,
    energy_pointing_game,
    faithfulness_correlation,
    functional,
    increase_in_confidence,
    infidelity,
    insertion,
    mprt,
    pointing_game,
    road,
    sensitivity_max,
    sparseness,
    token_perturbation,
)
from ._base import Batch, Metric, MetricResult, nanmean
from ._registration import get_metric, list_metrics, metrics, register_metric
from ._twin_modules import make_callable
from .average_drop import AverageDrop
from .complexity import Complexity
from .deletion import Deletion
from .energy_pointing_game import EnergyPointingGame
from .faithfulness_correlation import FaithfulnessCorrelation
from .increase_in_confidence import IncreaseInConfidence
from .infidelity import Infidelity
from .insertion import Insertion
from .mprt import MPRT, MPRTResult
from .pointing_game import PointingGame
from .road import ROAD
from .sensitivity_max import SensitivityMax
from .sparseness import Sparseness
from .token_perturbation import TokenPerturbation

#: Every metric, by name (the same registry as ``metrics``).
metric_registry = metrics

make_callable(deletion, energy_pointing_game, insertion, mprt, pointing_game)
make_callable(road, faithfulness_correlation, infidelity, sensitivity_max)
make_callable(average_drop, complexity, increase_in_confidence, sparseness, token_perturbation)

__all__ = [
    "MPRT",
    "ROAD",
    "AverageDrop",
    "Batch",
    "Complexity",
    "Deletion",
    "EnergyPointingGame",
    "FaithfulnessCorrelation",
    "IncreaseInConfidence",
    "Infidelity",
    "Insertion",
    "MPRTResult",
    "Metric",
    "MetricResult",
    "PointingGame",
    "SensitivityMax",
    "Sparseness",
    "TokenPerturbation",
    "average_drop",
    "complexity",
    "deletion",
    "energy_pointing_game",
    "faithfulness_correlation",
    "functional",
    "get_metric",
    "increase_in_confidence",
    "infidelity",
    "insertion",
    "list_metrics",
    "metric_registry",
    "metrics",
    "mprt",
    "nanmean",
    "pointing_game",
    "register_metric",
    "road",
    "sensitivity_max",
    "sparseness",
    "token_perturbation",
]
