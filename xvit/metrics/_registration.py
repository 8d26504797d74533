"""The metric registry: built-ins register on import, plugins via ``xvit.metrics``."""

from __future__ import annotations

from typing import TypeVar

from .._registry import Registry
from ._base import Metric

M = TypeVar("M", bound=type[Metric])

#: Every evaluation metric, by name.
metrics: Registry[type[Metric]] = Registry("metric", group="xvit.metrics")


def register_metric(cls: M) -> M:
    """Class decorator: register a :class:`Metric` subclass under its ``name``.

    Example:
        >>> import torch
        >>> from xvit.metrics import Metric, MetricResult, list_metrics, metrics, register_metric
        >>> @register_metric
        ... class MapMax(Metric):
        ...     name = "map-max-doc"
        ...     def score(self, batch):
        ...         return MetricResult(self.name, batch.saliency.flatten(1).amax(1).double())
        >>> "map-max-doc" in list_metrics()
        True
        >>> metrics.unregister("map-max-doc")
    """
    return metrics.register_named(cls, Metric, "register_metric")  # type: ignore[no-any-return]


def get_metric(name: str | type[Metric]) -> type[Metric]:
    """The metric class registered under ``name`` (unknown names list the known ones).

    Example:
        >>> from xvit.metrics import get_metric
        >>> get_metric("deletion").higher_is_better
        False
    """
    return metrics.get(name)


def list_metrics(pattern: str | None = None) -> list[str]:
    """Registered metric names, optionally filtered by a wildcard such as ``"*pointing*"``.

    Example:
        >>> from xvit.metrics import list_metrics
        >>> list_metrics("*pointing*")
        ['energy_pointing_game', 'pointing_game']
    """
    return metrics.names(pattern)
