"""Benchmark plots: mean curves with their confidence bands (:func:`plot_curves`) and the
explanation time per method (:func:`plot_times`), from what
:func:`xvit.bench.run_benchmark` returns."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import InvalidInputError, ParameterError
from ._figures import new_figure
from ._metric_labels import curve_axis, curve_rank, curve_title, metric_class

__all__ = ["plot_curves", "plot_times"]


def _summaries_and_fractions(
    results: Any, fractions: Mapping[str, Sequence[float]] | None
) -> tuple[list[Any], dict[str, list[float]]]:
    if hasattr(results, "summaries"):
        summaries = list(results.summaries)
        fractions = fractions if fractions is not None else getattr(results, "fractions", {})
    else:
        summaries = list(results)
    if not all(hasattr(s, "method") and hasattr(s, "curves") for s in summaries):
        raise InvalidInputError(
            "plot_curves and plot_times take what xvit.bench.run_benchmark returns, or its "
            "list of MethodSummary"
        )
    return summaries, {k: list(v) for k, v in (fractions or {}).items()}


def _method_colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def plot_curves(
    results: Any,
    fractions: Mapping[str, Sequence[float]] | None = None,
    *,
    metrics: Sequence[str] | None = None,
) -> Any:
    """Mean insertion and deletion curves per method, with shaded 95% confidence bands.

    The band at each point is the two-sided 95% Student-t interval of the mean over images
    (computed by :func:`xvit.bench.run_benchmark`'s summary, needs two images or more); the
    legend gives each method's mean AUC.

    Args:
        results: What :func:`xvit.bench.run_benchmark` returns, or its list of
            :class:`~xvit.bench.MethodSummary` (then pass ``fractions``).
        fractions: Curve metric -> x positions of its points (``results.fractions``).
        metrics: Which curve metrics to draw (default: every one with curves, insertion and
            deletion first).

    Returns:
        The matplotlib Figure, one panel per curve metric.

    Raises:
        ParameterError: The results hold no curves (run the insertion or deletion metric).

    Example:
        >>> import timm
        >>> from PIL import Image
        >>> from types import SimpleNamespace as S
        >>> from xvit.bench import run_benchmark
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> data = [S(image=Image.new("RGB", (32, 32), (9 * i, 0, 0)), label=1, boxes=(),
        ...           id=str(i)) for i in range(3)]
        >>> r = run_benchmark(m, data, methods="attention,random", metrics="insertion,deletion",
        ...                   n=3, progress=False)
        >>> print(r.table)  # doctest: +ELLIPSIS
        | method | n | insertion ↑ | deletion ↓ | time (s) | expl/s |
        ...
        >>> fig = plot_curves(r)
        >>> [ax.get_title() for ax in fig.axes]
        ['insertion (higher AUC is better)', 'deletion (lower AUC is better)']
    """
    summaries, fracs = _summaries_and_fractions(results, fractions)
    available = [m for m in fracs if any(m in s.curves for s in summaries)]
    available.sort(key=lambda m: curve_rank(metric_class(m)))
    if metrics is None:
        chosen = available
    else:
        chosen = list(metrics)
        missing = [m for m in chosen if m not in available]
        if missing:
            raise ParameterError(
                f"no curves for {', '.join(missing)} in these results; they have curves for: "
                f"{', '.join(available) or '(none)'}"
            )
    if not chosen:
        raise ParameterError(
            "these results hold no curves: run the benchmark with the insertion and/or "
            "deletion metric (e.g. --metrics insertion,deletion)"
        )
    colours = _method_colours([s.method for s in summaries])
    fig = new_figure(4.6 * len(chosen) + 1.6, 3.8, layout="constrained")
    axes = fig.subplots(1, len(chosen), squeeze=False)[0]
    for ax, metric in zip(axes, chosen):
        x = np.asarray(fracs[metric], dtype=np.float64)
        for s in summaries:
            if metric not in s.curves:
                continue
            mean = np.asarray(s.curves[metric], dtype=np.float64)
            if mean.shape != x.shape:
                continue
            auc = s.metrics[metric].mean if metric in s.metrics else float("nan")
            label = s.method if math.isnan(auc) else f"{s.method} ({auc:.3f})"
            ax.plot(x, mean, color=colours[s.method], lw=1.6, label=label)
            band = getattr(s, "bands", {}).get(metric)
            if band is not None:
                low, high = (np.asarray(b, dtype=np.float64) for b in band)
                if low.shape == x.shape and np.isfinite(low).all() and np.isfinite(high).all():
                    ax.fill_between(x, low, high, color=colours[s.method], alpha=0.13, lw=0)
        ax.set_title(curve_title(metric), fontsize=10)
        ax.set_xlabel(curve_axis(metric), fontsize=9)
        ax.set_ylabel("target-class probability", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, title="method (mean AUC)", title_fontsize=7, loc="best")
    return fig


def plot_times(results: Any) -> Any:
    """A bar chart of explanation time per image for each method (log scale when the times
    span more than a factor of 30).

    Args:
        results: What :func:`xvit.bench.run_benchmark` returns, or its list of
            :class:`~xvit.bench.MethodSummary`.

    Returns:
        The matplotlib Figure.

    Example:
        >>> from xvit.bench import MethodSummary
        >>> fig = plot_times([MethodSummary("fast", images=10, time_s=0.5),
        ...                   MethodSummary("slow", images=10, time_s=40.0)])
        >>> fig.axes[0].get_xscale()
        'log'
    """
    summaries, _ = _summaries_and_fractions(results, None)
    rows = [s for s in summaries if s.images > 0]
    if not rows:
        raise ParameterError("these results hold no timed explanations")
    per_image = [s.time_s / s.images for s in rows]
    colours = _method_colours([s.method for s in summaries])
    fig = new_figure(6.4, 0.45 * len(rows) + 1.3, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    ax.barh(y, per_image, color=[colours[s.method] for s in rows], height=0.65)
    ax.set_yticks(y, [s.method for s in rows], fontsize=9)
    ax.invert_yaxis()
    positive = [t for t in per_image if t > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
    top = max(per_image) if per_image else 1.0
    ax.set_xlim(right=top * (8 if ax.get_xscale() == "log" else 1.35))
    for yi, t in zip(y, per_image):
        rate = f"{1 / t:.1f}/s" if t > 0 else "n/a"
        ax.annotate(
            f"{t:.3g} s ({rate})",
            (t, yi),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("seconds per image (explanation only, metrics excluded)", fontsize=9)
    counts = {s.images for s in rows}
    over = f" ({counts.pop()} images)" if len(counts) == 1 else ""
    ax.set_title(f"explanation time per image{over}", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig
