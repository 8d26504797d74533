"""Summaries of benchmark records: means with confidence intervals, table, CSV/JSON, plot."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..viz import plot_curves as curves_figure
from ..viz import plot_times
from ._compare import MetricComparison, comparison_notes


@dataclass
class Estimate:
    """Mean of the defined per-image scores with a two-sided 95% Student-t interval.

    ``ci_low``/``ci_high`` are NaN with fewer than two values; every field is NaN when no
    image has a defined score.

    Example:
        >>> e = Estimate(mean=0.5, ci_low=0.4, ci_high=0.6, n=30)
        >>> round(e.half_width, 3)
        0.1
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def estimate(values: Sequence[float | None], level: float = 0.95) -> Estimate:
    """Mean and ``level`` t-interval of the finite entries of ``values``.

    Example:
        >>> e = estimate([1.0, 2.0, 3.0, None, float("nan")])  # undefined scores are left out
        >>> e.n, e.mean, round(e.half_width, 3)  # t(0.975, 2) x 1 / sqrt(3)
        (3, 2.0, 2.484)
    """
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
    """One method's results over the benchmark images.

    Attributes:
        method: The method's name.
        images: Number of images explained.
        time_s: Explanation wall time over all images, in seconds (metrics excluded).
        metrics: Metric name -> :class:`Estimate` of the per-image scores.
        curves: Curve metric -> mean curve over the images.
        bands: Curve metric -> (low, high): the 95% Student-t interval of the mean at each
            point of the curve (NaN with fewer than two images).

    Example:
        >>> s = MethodSummary("gradmask", images=4, time_s=2.0)
        >>> s.per_second
        2.0
    """

    method: str
    images: int
    time_s: float
    metrics: dict[str, Estimate] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    bands: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

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
                summary.bands[metric] = curve_band(curves)
        out.append(summary)
    return out


def curve_band(
    curves: Sequence[Sequence[float]], level: float = 0.95
) -> tuple[list[float], list[float]]:
    """Pointwise ``level`` Student-t interval of the mean of equally long curves.

    Example:
        >>> low, high = curve_band([[0.0, 1.0], [0.0, 3.0]])
        >>> low[0], high[0], round(high[1] - 2.0, 3)  # t(0.975, 1) * 1 / sqrt(2) * sqrt(2)
        (0.0, 0.0, 12.706)
    """
    from scipy import stats

    values = np.asarray(curves, dtype=np.float64)
    n = values.shape[0]
    if n < 2:
        nan = [math.nan] * values.shape[1]
        return nan, list(nan)
    mean = values.mean(axis=0)
    sem = values.std(axis=0, ddof=1) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem
    return (mean - half).tolist(), (mean + half).tolist()


def _fmt(e: Estimate) -> str:
    if math.isnan(e.mean):
        return "n/a"
    if math.isnan(e.ci_low):
        return f"{e.mean:.3f}"
    return f"{e.mean:.3f} ± {e.half_width:.3f}"


def _cell(e: Estimate, method: str, comparison: MetricComparison | None) -> str:
    """A table cell: bold for the best mean, ``≈`` when not significantly different."""
    text = _fmt(e)
    if comparison is None:
        return text
    if method == comparison.best:
        return f"**{text}**"
    return f"{text} ≈" if comparison.same_as_best(method) else text


def markdown_table(
    summaries: Sequence[MethodSummary],
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
    notes: Sequence[str] = (),
    comparisons: Mapping[str, MetricComparison] | None = None,
) -> str:
    """Method x metric table: mean ± 95% CI half-width, then time and explanations/s; under
    it what the numbers are, then ``notes`` (the metrics' settings), one per line.

    With ``comparisons`` (:func:`~xvit.bench._compare.compare`) the best mean of each metric
    is bold, the means not significantly different from it carry ``≈``, a second table gives
    the normalised scores (when the random baseline ran), and the notes say how.

    Example:
        >>> s = MethodSummary("m", images=1, time_s=0.5, metrics={"pg": estimate([1.0])})
        >>> print(markdown_table([s], ["pg"], {"pg": True}, notes=["pg: 4.3 px."]))
        | method | n | pg ↑ | time (s) | expl/s |
        |---|---|---|---|---|
        | m | 1 | 1.000 | 0.50 | 2.00 |
        <BLANKLINE>
        Mean ± half-width of the 95% Student-t ... (metrics excluded).
        pg: 4.3 px.
    """
    comparisons = comparisons or {}
    arrows = {m: "↑" if higher_is_better.get(m, True) else "↓" for m in metrics}
    head = ["method", "n", *[f"{m} {arrows[m]}" for m in metrics], "time (s)", "expl/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for s in summaries:
        cells = [s.method, str(s.images)]
        cells += [_cell(s.metrics[m], s.method, comparisons.get(m)) for m in metrics]
        cells += [f"{s.time_s:.2f}", f"{s.per_second:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    normalised = [m for m in metrics if m in comparisons and comparisons[m].normalized]
    if normalised:
        lines += ["", "Normalised (0 = random, 1 = best):", ""]
        lines.append("| method | " + " | ".join(f"{m} {arrows[m]}" for m in normalised) + " |")
        lines.append("|" + "|".join(["---"] * (len(normalised) + 1)) + "|")
        for s in summaries:
            values = [comparisons[m].normalized.get(s.method, math.nan) for m in normalised]
            cells = ["n/a" if math.isnan(v) else f"{v:.2f}" for v in values]
            lines.append(f"| {s.method} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± half-width of the 95% Student-t confidence interval over images; ")
    lines[-1] += "time is explanation wall time only (metrics excluded)."
    if comparisons:
        lines += comparison_notes(comparisons, [s.method for s in summaries])
    lines += [note for note in notes if note]
    return "\n".join(lines)


def write_csv(
    path: Path,
    summaries: Sequence[MethodSummary],
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
    comparisons: Mapping[str, MetricComparison] | None = None,
) -> None:
    """One row per (method, metric); with ``comparisons`` also the normalised mean and the
    paired test against the metric's best method (empty cells where there is none)."""
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
                "normalized",
                "best",
                "n_paired",
                "p_vs_best",
                "p_holm",
                "same_as_best",
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
                        *_test_cells(comparisons, m, s.method),
                    ]
                )


def _test_cells(
    comparisons: Mapping[str, MetricComparison] | None, metric: str, method: str
) -> list[Any]:
    """The CSV cells of a method's normalised mean and its test against the best."""
    comparison = (comparisons or {}).get(metric)
    if comparison is None:
        return [""] * 6
    row = comparison.as_dict(method)
    test = row["vs_best"] or {}
    cells = [row["normalized"], row["best"], test.get("n"), test.get("p"), test.get("p_holm")]
    return ["" if v is None else v for v in cells] + [test.get("same_as_best", "")]


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
    comparisons: Mapping[str, MetricComparison] | None = None,
) -> dict[str, Any]:
    """Everything in the table plus mean curves and the run settings, JSON-ready; with
    ``comparisons`` each metric entry adds ``normalized``, ``best`` and ``vs_best`` (the
    paired test against the best method, None for the best itself), and ``comparisons``
    gives each metric's best method, baseline mean and notes."""
    comparisons = comparisons or {}
    methods = {}
    for s in summaries:
        methods[s.method] = {
            "images": s.images,
            "time_s": s.time_s,
            "explanations_per_s": s.per_second,
            "metrics": {
                m: {
                    "mean": e.mean,
                    "ci_low": e.ci_low,
                    "ci_high": e.ci_high,
                    "n": e.n,
                    **(comparisons[m].as_dict(s.method) if m in comparisons else {}),
                }
                for m, e in s.metrics.items()
            },
            "mean_curves": s.curves,
        }
    data: dict[str, Any] = {"config": dict(config), "fractions": dict(fractions)}
    data["methods"] = methods
    if comparisons:
        data["comparisons"] = {
            m: {
                "best": c.best,
                "higher_is_better": c.higher_is_better,
                "baseline": c.baseline,
                "note": c.note,
            }
            for m, c in comparisons.items()
        }
        data["statistics"] = comparison_notes(comparisons, list(methods))
    return _clean(data)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def plot_curves(
    path: Path,
    summaries: Sequence[MethodSummary],
    fractions: Mapping[str, list[float]],
) -> bool:
    """Write the benchmark's pictures: the curves PNG at ``path`` and ``times.png`` beside it.

    ``path`` gets the mean insertion/deletion curves with 95% bands
    (:func:`xvit.viz.plot_curves`) when a curve metric ran; ``times.png`` in the same folder
    always gets the time-per-method bar chart (:func:`xvit.viz.plot_times`). Figures are drawn
    on the Agg canvas, so the global matplotlib backend is untouched.

    Returns:
        Whether the curves PNG was written.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> s = MethodSummary("m", images=2, time_s=1.0, curves={"insertion": [0.1, 0.9]})
        >>> plot_curves(folder / "curves.png", [s], {"insertion": [0.0, 1.0]})
        True
        >>> sorted(p.name for p in folder.iterdir())
        ['curves.png', 'times.png']
    """
    path = Path(path)
    if any(s.images > 0 for s in summaries):
        plot_times(summaries).savefig(str(path.with_name("times.png")), dpi=110)
    names = [m for m in fractions if any(m in s.curves for s in summaries)]
    if not names:
        return False
    curves_figure(summaries, fractions).savefig(str(path), dpi=110)
    return True
