"""The MPRT figure: each method's similarity to its original maps as the model's layers are
randomised from the top (:class:`~xvit.metrics.MPRT`), from what
:func:`xvit.bench.run_benchmark` returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import InvalidInputError, ParameterError
from ._figures import new_figure
from .curves import _method_colours

__all__ = ["plot_mprt"]

#: The y axis for each of MPRT's similarity measures.
SIMILARITY_AXES = {
    "spearman": "Spearman rank correlation with the original map",
    "ssim": "SSIM with the original map",
}


def plot_mprt(
    results: Any,
    steps: Sequence[str],
    *,
    metric: str = "mprt",
    similarity: str = "spearman",
) -> Any:
    """Mean similarity to the original maps after each randomisation step, one line per
    method, with shaded 95% confidence bands (two images or more).

    Args:
        results: What :func:`xvit.bench.run_benchmark` returns, or its list of
            :class:`~xvit.bench.MethodSummary`.
        steps: The steps' labels, in order (:meth:`xvit.metrics.MPRT.steps` of the model,
            or an :class:`~xvit.metrics.MPRTResult`'s ``steps``).
        metric: The name the MPRT metric ran under.
        similarity: The similarity it measured (``"spearman"`` or ``"ssim"``), for the axis.

    Returns:
        The matplotlib Figure.

    Raises:
        ParameterError: The results hold no curve of ``metric`` with one value per step.

    Example:
        >>> from xvit.bench import MethodSummary
        >>> s = [MethodSummary("gae", 4, 1.0, curves={"mprt": [0.8, 0.4, 0.1]}),
        ...      MethodSummary("random", 4, 1.0, curves={"mprt": [1.0, 1.0, 1.0]})]
        >>> fig = plot_mprt(s, ["head", "block 0", "embeddings"])
        >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
        ['head', 'block 0', 'embeddings']
        >>> [line.get_label() for line in fig.axes[0].get_lines()][:2]
        ['gae', 'random']
    """
    summaries = list(getattr(results, "summaries", results))
    if not all(hasattr(s, "method") and hasattr(s, "curves") for s in summaries):
        raise InvalidInputError(
            "plot_mprt takes what xvit.bench.run_benchmark returns, or its list of MethodSummary"
        )
    labels = [str(step) for step in steps]
    drawn = [s for s in summaries if len(s.curves.get(metric, ())) == len(labels) > 0]
    if not drawn:
        raise ParameterError(
            f"these results hold no {metric} curve with {len(labels)} steps: run the benchmark "
            f"with the mprt metric (e.g. --metrics mprt) and pass its steps, "
            f"MPRT().steps(model)"
        )
    colours = _method_colours([s.method for s in summaries])
    x = np.arange(1, len(labels) + 1)
    fig = new_figure(max(6.8, 0.55 * len(labels) + 4.0), 4.0, layout="constrained")
    ax = fig.add_subplot()
    for s in drawn:
        mean = np.asarray(s.curves[metric], dtype=np.float64)
        score = s.metrics[metric].mean if metric in s.metrics else math.nan
        label = s.method if math.isnan(score) else f"{s.method} ({score:.3f})"
        ax.plot(x, mean, color=colours[s.method], lw=1.6, marker="o", ms=3, label=label)
        band = getattr(s, "bands", {}).get(metric)
        if band is not None:
            low, high = (np.asarray(b, dtype=np.float64) for b in band)
            if low.shape == x.shape and np.isfinite(low).all() and np.isfinite(high).all():
                ax.fill_between(x, low, high, color=colours[s.method], alpha=0.13, lw=0)
    ax.axhline(0.0, color="0.5", lw=0.8)
    crowded = len(labels) > 10  # module names at layers="modules"
    ax.set_xticks(
        x, labels, fontsize=8, rotation=45 if crowded else 0, ha="right" if crowded else "center"
    )
    ax.set_xlabel("randomised down to (cumulative, from the output)", fontsize=9)
    ax.set_ylabel(SIMILARITY_AXES.get(similarity, f"{similarity} similarity"), fontsize=9)
    ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
    ax.set_title(f"{metric}: similarity to the original maps (lower is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(  # beside the axes: the lines cross the whole range
        fontsize=7,
        title="method (mean score)",
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    return fig
