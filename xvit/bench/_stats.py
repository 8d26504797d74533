"""The statistics of the benchmark report, as pure functions on numpy arrays.

- :func:`signed_rank_test`: the Wilcoxon signed-rank test of two methods' scores on the same
  images (paired by image id; an image counts when both scores are defined).
- :func:`holm`: Holm's step-down adjustment of the p-values of one metric's comparisons.
- :func:`normalized`: a score placed between the random baseline (0) and the best method (1).

How the signed-rank test treats zeros, ties and few images (xvit's rule, the same whatever
the scipy version):

- The differences are first rounded to ``1e-12`` times the largest score in the pair, so
  that the roundoff of a subtraction neither makes two equal scores differ nor splits a tie.
- Zero differences are dropped (``zero_method="wilcox"``, Wilcoxon 1945; scipy's and R's
  default): an image on which both methods score the same says nothing about which is
  better. For a 0/1 score such as the pointing game the test then becomes the exact sign
  test on the images where exactly one method hits.
- ``n`` non-zero differences with no ties among their absolute values, ``n <= 50``: scipy's
  exact null distribution. With ties and ``n <= 16``: the exact distribution of the
  statistic over all ``2**n`` sign patterns of the mid-ranks (the permutation test, which
  is exact with ties). Otherwise scipy's normal approximation with the tie correction of
  the variance and no continuity correction.
- Every difference zero (the two methods agree on every image): ``p = 1``. No paired image
  at all: ``p`` is NaN (not tested).
- With ``n <= 5`` non-zero differences the smallest two-sided p-value is ``2 / 2**n >=
  0.0625``: no difference on so few images can be significant at 0.05.

References:
    Wilcoxon, "Individual comparisons by ranking methods", Biometrics Bulletin 1945.
    Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 1979.

Example:
    >>> import numpy as np
    >>> test = signed_rank_test(np.array([0.9, 0.8, 0.7]), np.array([0.9, 0.8, 0.7]))
    >>> test.pvalue, test.nonzero  # the same scores everywhere: no difference
    (1.0, 0)
    >>> holm(np.array([0.01, 0.04, 0.03])).tolist()  # m = 3: 3 p1, then 2 p, then 1 p
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np

#: Differences closer to zero than this share of the largest score are zero.
RELATIVE_TOLERANCE = 1e-12

#: Most non-zero differences with ties for which the exact distribution is enumerated.
MAX_ENUMERATED = 16

#: Most non-zero differences without ties for which scipy's exact distribution is used.
MAX_EXACT = 50


@dataclass(frozen=True)
class PairedTest:
    """The two-sided Wilcoxon signed-rank test of ``a - b``.

    Attributes:
        n: Images where both scores are defined.
        nonzero: Those where the scores differ (the test's sample size).
        statistic: The smaller of the rank sums of the positive and negative differences.
        pvalue: Two-sided p-value (1.0 when every difference is zero, NaN when ``n`` is 0).
        method: ``"exact"``, ``"enumerated"`` (exact, with ties), ``"normal"`` or
            ``"none"`` (no difference, or nothing to test).

    Example:
        >>> PairedTest(n=8, nonzero=8, statistic=0.0, pvalue=0.0078125, method="exact").pvalue
        0.0078125
    """

    n: int
    nonzero: int
    statistic: float
    pvalue: float
    method: str


def paired_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` where both are finite, rounded to :data:`RELATIVE_TOLERANCE` of the
    largest absolute score of the two.

    Example:
        >>> paired_differences(np.array([0.3, np.nan, 1.0]), np.array([0.1, 2.0, 1.0]))
        array([0.2, 0. ])
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-d arrays of one length, got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    d = a - b
    if d.size == 0:
        return d
    step = RELATIVE_TOLERANCE * float(max(np.abs(a).max(), np.abs(b).max()))
    return np.round(d / step) * step if step > 0 else d


def signed_rank_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of paired scores ``a`` and ``b`` (NaN: undefined).

    See the module docstring for the treatment of zeros, ties and few images.

    Example:
        >>> b = np.zeros(8)
        >>> t = signed_rank_test(b + np.arange(1, 9), b)  # 8 images, all better: 2 / 2**8
        >>> t.statistic, t.pvalue, t.method
        (0.0, 0.0078125, 'exact')
    """
    from scipy import stats

    d = paired_differences(a, b)
    n = int(d.size)
    d = d[d != 0]
    k = int(d.size)
    if n == 0:
        return PairedTest(0, 0, math.nan, math.nan, "none")
    if k == 0:
        return PairedTest(n, 0, 0.0, 1.0, "none")
    ranks = stats.rankdata(np.abs(d))
    ties = len(np.unique(np.abs(d))) < k
    r_plus = float(ranks[d > 0].sum())
    statistic = min(r_plus, float(ranks.sum()) - r_plus)
    if not ties and k <= MAX_EXACT:
        p = float(stats.wilcoxon(d, zero_method="wilcox", method="exact").pvalue)
        return PairedTest(n, k, statistic, min(p, 1.0), "exact")
    if ties and k <= MAX_ENUMERATED:
        return PairedTest(n, k, statistic, _enumerated_p(ranks, r_plus), "enumerated")
    p = float(stats.wilcoxon(d, zero_method="wilcox", method=_normal_method()).pvalue)
    return PairedTest(n, k, statistic, min(p, 1.0), "normal")


def _enumerated_p(ranks: np.ndarray, r_plus: float) -> float:
    """Two-sided p of the rank sum ``r_plus`` over every sign pattern of ``ranks``."""
    signs = np.array(list(product((0.0, 1.0), repeat=len(ranks))))
    sums = signs @ ranks
    eps = 1e-9 * float(ranks.sum())
    upper = float(np.mean(sums >= r_plus - eps))
    lower = float(np.mean(sums <= r_plus + eps))
    return min(1.0, 2 * min(upper, lower))


def _normal_method() -> str:
    """scipy's name of its normal approximation (``"approx"`` before scipy 1.13)."""
    import scipy

    major, minor = (int(part) for part in scipy.__version__.split(".")[:2])
    return "asymptotic" if (major, minor) >= (1, 13) else "approx"


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, capped at 1 and monotone in the raw p-values.

    NaN entries (comparisons not made) stay NaN and do not count among the ``m`` tests.

    Example:
        >>> holm(np.array([0.04, np.nan, 0.5, 0.001])).tolist()
        [0.08, nan, 0.5, 0.003]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def normalized(score: float, baseline: float, best: float) -> float:
    """``(score - baseline) / (best - baseline)``: 0 at the random baseline, 1 at the best
    method, negative below the baseline. The direction of the metric is in ``best`` (the
    lowest score when lower is better), so the formula needs no sign. NaN when the best is
    the baseline (no room between them) or a value is undefined.

    Example:
        >>> normalized(0.5, baseline=0.25, best=0.75), normalized(0.5, baseline=1.0, best=0.0)
        (0.5, 0.5)
    """
    values = (score, baseline, best)
    if not all(math.isfinite(v) for v in values):
        return math.nan
    span = best - baseline
    if abs(span) <= RELATIVE_TOLERANCE * max(abs(best), abs(baseline)) or span == 0:
        return math.nan
    return (score - baseline) / span
