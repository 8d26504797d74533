"""Each metric's methods compared: the best one, paired tests against it, normalised scores.

The best method of a metric is the one with the best mean (the table's mean: over the images
where its score is defined; the first in method order on a tie). Every other method is
tested against it with :func:`~xvit.bench._stats.signed_rank_test` on the images where both
scores are defined, paired by image id, and the p-values of one metric are Holm-corrected
over the methods compared. Scores are normalised between the random baseline (the method
named :data:`BASELINE`) and the best method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._stats import MAX_ENUMERATED, MAX_EXACT, PairedTest, holm, normalized, signed_rank_test

#: The method whose scores are the 0 of the normalised scores.
BASELINE = "random"

#: The significance level of the paired tests.
ALPHA = 0.05

#: Under the table: what bold and the marker mean, and the test behind the marker.
TEST_NOTE = (
    "Bold: the best mean of each metric. ≈: not significantly different from it (two-sided "
    "Wilcoxon signed-rank test over the images where both scores are defined, paired by "
    f"image id, ties in score dropped; exact up to {MAX_EXACT} differing images, or "
    f"{MAX_ENUMERATED} with tied differences, else the normal approximation; p-values "
    f"Holm-corrected over the methods compared on each metric, α = {ALPHA}; with 5 differing "
    "images or fewer no difference can be significant)."
)


@dataclass
class MetricComparison:
    """One metric's methods against its best one.

    Attributes:
        metric: The metric's name.
        higher_is_better: Its direction (read from the metric).
        best: The method with the best mean (None when no method has a defined score).
        baseline: The random baseline's mean (None when it did not run or has no score).
        normalized: Method -> ``(mean - baseline) / (best mean - baseline)``; empty when
            the scores cannot be normalised (then ``note`` says why).
        tests: Method -> its paired test against the best (the best itself has none).
        adjusted: Method -> Holm-adjusted p-value of its test (NaN when not tested).
        note: Why the scores are not normalised, when they are not.

    Example:
        >>> c = MetricComparison("insertion", True, best="gradmask", adjusted={"gae": 0.2})
        >>> c.same_as_best("gae"), c.same_as_best("gradmask"), c.same_as_best("random")
        (True, False, False)
    """

    metric: str
    higher_is_better: bool
    best: str | None = None
    baseline: float | None = None
    normalized: dict[str, float] = field(default_factory=dict)
    tests: dict[str, PairedTest] = field(default_factory=dict)
    adjusted: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    def same_as_best(self, method: str) -> bool:
        """Whether ``method`` was tested against the best and not found different at
        :data:`ALPHA` (after Holm's correction)."""
        p = self.adjusted.get(method, math.nan)
        return method != self.best and not math.isnan(p) and p >= ALPHA

    def as_dict(self, method: str) -> dict[str, Any]:
        """``method``'s normalised score and test, JSON-ready (NaN as None)."""
        test = self.tests.get(method)
        return {
            "normalized": _number(self.normalized.get(method, math.nan)),
            "best": method == self.best,
            "vs_best": None
            if test is None
            else {
                "n": test.n,
                "nonzero": test.nonzero,
                "statistic": _number(test.statistic),
                "p": _number(test.pvalue),
                "p_holm": _number(self.adjusted.get(method, math.nan)),
                "method": test.method,
                "same_as_best": self.same_as_best(method),
            },
        }


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def compare(
    records: Sequence[Mapping[str, Any]],
    means: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
) -> dict[str, MetricComparison]:
    """Every metric's comparison, from the per-image records and each method's means.

    Args:
        records: Per-image records (``id``, ``method``, ``scores``).
        means: Method -> metric -> mean score (the table's means), in the table's order.
        higher_is_better: Metric -> its direction.

    Example:
        >>> recs = [{"id": str(i), "method": m, "scores": {"s": s + i}}
        ...         for i in range(8) for m, s in (("random", 0.0), ("good", 1.0))]
        >>> means = {"random": {"s": 3.5}, "good": {"s": 4.5}}
        >>> c = compare(recs, means, {"s": True})["s"]
        >>> c.best, c.normalized, c.tests["random"].pvalue
        ('good', {'random': 0.0, 'good': 1.0}, 0.0078125)
    """
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for r in records:
        for metric, value in r["scores"].items():
            by_id = scores.setdefault(metric, {}).setdefault(r["method"], {})
            by_id[r["id"]] = math.nan if value is None else float(value)
    return {
        metric: _compare_one(metric, higher, scores.get(metric, {}), means)
        for metric, higher in higher_is_better.items()
    }


def _compare_one(
    metric: str,
    higher: bool,
    scores: Mapping[str, Mapping[str, float]],
    means: Mapping[str, Mapping[str, float]],
) -> MetricComparison:
    out = MetricComparison(metric, higher)
    defined = {m: v[metric] for m, v in means.items() if math.isfinite(v.get(metric, math.nan))}
    if not defined:
        out.note = f"{metric}: no method has a defined score"
        return out
    sign = 1.0 if higher else -1.0
    best = max(defined, key=lambda m: sign * defined[m])  # the first of equal means
    out.best = best
    others = [m for m in means if m != best]
    for method in others:
        out.tests[method] = _paired(scores.get(method, {}), scores.get(best, {}))
    adjusted = holm(np.array([out.tests[m].pvalue for m in others], dtype=np.float64))
    out.adjusted = dict(zip(others, adjusted.tolist()))
    if BASELINE not in defined:
        out.note = f"{metric}: not normalised, the random baseline has no score"
        return out
    out.baseline = defined[BASELINE]
    if math.isnan(normalized(defined[best], out.baseline, defined[best])):
        out.note = f"{metric}: not normalised, no method is better than the random baseline"
        return out
    out.normalized = {m: normalized(v, out.baseline, defined[best]) for m, v in defined.items()}
    return out


def _paired(a: Mapping[str, float], b: Mapping[str, float]) -> PairedTest:
    ids = [i for i in a if i in b]
    return signed_rank_test(
        np.array([a[i] for i in ids], dtype=np.float64),
        np.array([b[i] for i in ids], dtype=np.float64),
    )


def comparison_notes(
    comparisons: Mapping[str, MetricComparison], methods: Sequence[str]
) -> list[str]:
    """The lines under the table on the tests and the normalised scores."""
    lines = [TEST_NOTE]
    if BASELINE not in methods:
        lines.append(
            f"No normalised scores: the random baseline (method {BASELINE!r}) was not in this "
            f"run; add it to --methods to place every method between it and the best."
        )
    else:
        lines.append(
            "Normalised: (mean - random) / (best mean - random), 0 at the random baseline, "
            "1 at the best method, below 0 for worse than random."
        )
        lines += [c.note for c in comparisons.values() if c.note]
    return lines
