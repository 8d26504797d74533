"""What a figure says about a metric, read from the class registered under its name: its short
name in crowded cells, which way is better, and for curve metrics the order of their panels
and what their x axis counts. A name that is not registered is shown as it is.
"""

from __future__ import annotations

from ..metrics import get_metric, list_metrics
from ..metrics._base import Metric


def metric_class(name: str) -> type[Metric] | None:
    """The metric class registered under ``name``, or None.

    Example:
        >>> metric_class("insertion").__name__, metric_class("my-score") is None
        ('Insertion', True)
    """
    return get_metric(name) if name in list_metrics() else None


def short_name(name: str) -> str:
    """The metric's :attr:`~xvit.metrics.Metric.short_name`, else ``name``.

    Example:
        >>> short_name("insertion"), short_name("energy_pointing_game"), short_name("mine")
        ('ins', 'energy_pointing_game', 'mine')
    """
    cls = metric_class(name)
    return (cls.short_name if cls is not None else "") or name


def better(cls: type[Metric]) -> str:
    """``"higher"`` or ``"lower"``: which scores of ``cls`` mean a better explanation.

    Example:
        >>> better(get_metric("insertion")), better(get_metric("deletion"))
        ('higher', 'lower')
    """
    return "higher" if cls.higher_is_better else "lower"


def curve_rank(cls: type[Metric] | None) -> int:
    """Where a curve metric's panel goes: games that reveal pixels (insertion) first, then
    those that remove them (deletion), then any other.

    Example:
        >>> [curve_rank(get_metric(n)) for n in ("insertion", "deletion", "pointing_game")]
        [0, 1, 2]
    """
    if cls is None or not cls.curve:
        return 2
    reveals = getattr(cls, "insertion", None)  # declared by the insertion/deletion games
    return 0 if reveals is True else 1 if reveals is False else 2


def curve_title(name: str) -> str:
    """A curve panel's title: the metric, and which way its AUC is better.

    Example:
        >>> curve_title("deletion"), curve_title("mine")
        ('deletion (lower AUC is better)', 'mine')
    """
    cls = metric_class(name)
    if cls is None or not cls.curve:
        return name
    return f"{name} ({better(cls)} AUC is better)"


def curve_axis(name: str) -> str:
    """What a curve's x axis counts.

    Example:
        >>> curve_axis("insertion"), curve_axis("mine")
        ('fraction of pixels inserted', 'fraction of pixels changed')
    """
    word = ("inserted", "deleted", "changed")[curve_rank(metric_class(name))]
    return f"fraction of pixels {word}"
