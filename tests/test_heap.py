"""settle_heap: a working set of several MiB is faulted in once, not on every reuse (glibc).

Each check runs in a fresh interpreter: the thresholds it moves are the process's, and this
test process has long had them moved by the other tests' explain calls.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import textwrap

import pytest

import xvit
import xvit.methods._base as methods_base
import xvit.metrics._base as metrics_base
from conftest import model_input
from xvit import _heap
from xvit.metrics import get_metric

glibc_only = pytest.mark.skipif(_heap._glibc() is None, reason="glibc's malloc thresholds")

# Eight 4 MiB buffers written and freed together, five times (a forward's activations, in
# small): the page faults of each round after the first.
WORKING_SET = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 4 * 2**20

    def faults_per_round():
        counts = []
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [libc.malloc(size) for _ in range(8)]
            for block in blocks:
                ctypes.memset(block, 1, size)
            for block in blocks:
                libc.free(block)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return counts[1:]

    out = {"before": faults_per_round()}
    {settle}
    out["after"] = faults_per_round()
    print(json.dumps(out))
    """
)


def _faults(settle: str) -> dict[str, list[int]]:
    code = WORKING_SET.replace("{settle}", settle)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_settled_heap_keeps_a_freed_working_set():
    pages = 8 * 4 * 2**20 // 4096
    counts = _faults("import xvit._heap as h; h.settle_heap()")
    assert min(counts["before"]) > pages // 2  # glibc hands the 32 MiB back every round
    assert max(counts["after"]) < pages // 20  # kept: no page is faulted in again


@glibc_only
def test_the_check_fails_without_settling():
    counts = _faults("import xvit._heap")  # importing xvit (and torch) does not do it
    pages = 8 * 4 * 2**20 // 4096
    assert min(counts["after"]) > pages // 2


def test_methods_and_metrics_settle_the_heap(monkeypatch, timm_vit):
    calls = []
    monkeypatch.setattr(methods_base, "settle_heap", lambda: calls.append("method"))
    monkeypatch.setattr(metrics_base, "settle_heap", lambda: calls.append("metric"))
    x = model_input(timm_vit)
    maps = xvit.explain("random", timm_vit, x).map
    get_metric("deletion")()(timm_vit, x, None, maps)
    assert calls == ["method", "metric"]


def test_settle_heap_is_a_noop_off_glibc(monkeypatch):
    monkeypatch.setattr(_heap, "_settled", False)
    monkeypatch.setattr(_heap, "_glibc", lambda: None)
    _heap.settle_heap()  # nothing to call: returns quietly
    assert _heap._settled


def test_block_stays_under_glibcs_ceiling():
    header = 2 * ctypes.sizeof(ctypes.c_size_t)
    page = 4096
    mapped = -(-(_heap.BLOCK_BYTES + header) // page) * page
    assert _heap.GLIBC_MMAP_THRESHOLD_MAX - 4 * page < mapped <= _heap.GLIBC_MMAP_THRESHOLD_MAX
