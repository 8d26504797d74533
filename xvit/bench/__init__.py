"""The benchmark runner: every method, the same images, targets and metric settings.

Example:
    >>> from xvit.bench import run_benchmark  # doctest: +SKIP
    >>> run_benchmark("xvit:digits-vit", "digits", methods="all", n=200,
    ...               out_dir="bench-out")  # doctest: +SKIP
"""

from __future__ import annotations

from ._report import Estimate, MethodSummary, estimate
from .runner import BenchmarkResults, RankFailedError, image_seed, run_benchmark

__all__ = [
    "BenchmarkResults",
    "Estimate",
    "MethodSummary",
    "RankFailedError",
    "estimate",
    "image_seed",
    "run_benchmark",
]
