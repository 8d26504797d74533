"""Summaries of benchmark records: means with confidence intervals, table, CSV/JSON, plot."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Estimate:
    """Mean of the defined per-image scores with a two-sided 95% Student-t interval.

    ``ci_low``/``ci_high`` are NaN with fewer than two values; every field is NaN when no
    image has a defined score.
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def estimate(values: Sequence[float | None], level: float = 0.95) -> Estimate:
    """Mean and ``level`` t-interval of the finite entries of ``values``."""
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * math.sqrt(var / n)
    return Estimate(mean, mean - half, mean + half, n)


@dataclass
class MethodSummary:
    """One method's results over the benchmark images."""

    method: str
    images: int
    time_s: float
    metrics: dict[str, Estimate] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.images / self.time_s if self.time_s > 0 else math.nan


def summarize(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[str],
) -> list[MethodSummary]:
    """Per-method estimates, explanation time and mean curves from per-image records."""
    out = []
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        summary = MethodSummary(
            method=method,
            images=len(rows),
            time_s=float(sum(float(r.get("time_s") or 0.0) for r in rows)),
        )
        for metric in metrics:
            summary.metrics[metric] = estimate([r["scores"].get(metric) for r in rows])
            curves = [r["curves"][metric] for r in rows if metric in r.get("curves", {})]
            if curves and all(len(c) == len(curves[0]) for c in curves):
                summary.curves[metric] = [sum(col) / len(curves) for col in zip(*curves)]
        out.append(summary)
    return out


def _fmt(e: Estimate) -> str:
    if math.isnan(e.mean):
        return "n/a"
    if math.isnan(e.ci_low):
        return f"{e.mean:.3f}"
    return f"{e.mean:.3f} ± {e.half_width:.3f}"


def markdown_table(
    summaries: Sequence[MethodSummary],
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
) -> str:
    """Method x metric table: mean ± 95% CI half-width, then time and explanations/s."""
    arrows = {m: "↑" if higher_is_better.get(m, True) else "↓" for m in metrics}
    head = ["method", "n", *[f"{m} {arrows[m]}" for m in metrics], "time (s)", "expl/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for s in summaries:
        cells = [s.method, str(s.images), *[_fmt(s.metrics[m]) for m in metrics]]
        cells += [f"{s.time_s:.2f}", f"{s.per_second:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± half-width of the 95% Student-t confidence interval over images; ")
    lines[-1] += "time is explanation wall time only (metrics excluded)."
    return "\n".join(lines)


def write_csv(
    path: Path,
    summaries: Sequence[MethodSummary],
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
) -> None:
    """One row per (method, metric)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "method",
                "metric",
                "mean",
                "ci_low",
                "ci_high",
                "n",
                "higher_is_better",
                "images",
                "time_s",
                "explanations_per_s",
            ]
        )
        for s in summaries:
            for m in metrics:
                e = s.metrics[m]
                writer.writerow(
                    [
                        s.method,
                        m,
                        e.mean,
                        e.ci_low,
                        e.ci_high,
                        e.n,
                        higher_is_better.get(m, True),
                        s.images,
                        s.time_s,
                        s.per_second,
                    ]
                )


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def summary_dict(
    summaries: Sequence[MethodSummary],
    fractions: Mapping[str, list[float]],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything in the table plus mean curves and the run settings, JSON-ready."""
    methods = {}
    for s in summaries:
        methods[s.method] = {
            "images": s.images,
            "time_s": s.time_s,
            "explanations_per_s": s.per_second,
            "metrics": {
                m: {"mean": e.mean, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}
                for m, e in s.metrics.items()
            },
            "mean_curves": s.curves,
        }
    return _clean({"config": dict(config), "fractions": dict(fractions), "methods": methods})


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def plot_curves(
    path: Path,
    summaries: Sequence[MethodSummary],
    fractions: Mapping[str, list[float]],
) -> bool:
    """A PNG with one panel per curve metric (insertion, deletion) and one line per method.

    Uses matplotlib's object API with the Agg canvas, so the global backend is untouched.
    Returns False (and writes nothing) when no curve metric was run.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [m for m in fractions if any(m in s.curves for s in summaries)]
    if not names:
        return False
    fig = Figure(figsize=(5 * len(names), 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for s in summaries:
            if metric in s.curves:
                ax.plot(fractions[metric], s.curves[metric], label=s.method)
        ax.set_title(f"mean {metric} curve")
        ax.set_xlabel(
            "fraction of pixels "
            + (
                "inserted"
                if metric == "insertion"
                else "deleted"
                if metric == "deletion"
                else "changed"
            )
        )
        ax.set_ylabel("target-class probability")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return True
