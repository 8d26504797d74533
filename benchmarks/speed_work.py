"""How close xvit comes to the work a method cannot avoid, and whether batching ever costs.

Two measurements for ``bench_speed.py``, each in interleaved rounds (best kept: this machine
is shared and drifts, and a ratio of two timings from the same rounds survives that):

* ``irreducible_rows``: for GradMask, RISE and ViT-CX, xvit's time (``xvit.explain``, its own
  clean forward included) against the **irreducible work** of the same images: one plain
  batched forward+backward of the images (a plain forward for a method without gradients),
  plus one plain batched forward of every masked image the method asks for (no
  deduplication, no last-block shortcut; the masked images' content does not change the
  time, so one batch of them is reused). ``ratio = irreducible / xvit``: 1 means xvit does
  no work beyond it, above 1 that its savings (identical masks, the last-block shortcut)
  beat the plain path. GradMask runs in fp32 and in bf16 (its plain passes then under the
  same autocast), each against the authors-style per-image path (fp32) in the same rounds;
  ``rank_agreement`` says how far bf16 maps rank patches as fp32 maps do. The authors-style
  path runs in a process of its own (:class:`OwnProcess`), as its users run it: xvit's first
  call moves the process's malloc thresholds (``xvit._heap``), and a baseline timed after it
  in the same process would get that saving too. It is also timed in xvit's process, so the
  table shows both.
* ``batching_rows``: every registered method on a batch of images in one call against the
  same images one call at a time; ``batched_gain`` = one-at-a-time seconds / batched seconds
  (at least 1: batching never costs per image).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import torch

import xvit
import xvit.methods._scoring as scoring
from xvit.metrics._similarity import spearman


def best_of(jobs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """The best seconds of each job over ``rounds`` interleaved rounds."""
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(rounds):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


class OwnProcess:
    """``fn(*args)`` run in a fresh process of its own on each call, for a job that must not
    share this process's state (its allocator's thresholds, above all).

    ``fn`` must be importable by name (a module-level function) and ``args`` picklable; they
    are sent once, when the process starts. The process uses as many torch threads as this
    one, sleeps between calls, and each call runs ``fn`` to its end there; the call's time
    is measured around it here, so the round trip (well under a millisecond) counts against
    the job. Use as a context manager, or :meth:`close` it.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, fn, args, torch.get_num_threads()), daemon=True
        )
        self._process.start()
        child.close()

    def __call__(self) -> None:
        self._conn.send(True)
        failure = self._conn.recv()
        if failure is not None:
            raise RuntimeError(f"the job in its own process failed: {failure}")

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(False)
            self._process.join(timeout=30)
        self._conn.close()

    def __enter__(self) -> OwnProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(conn: Connection, fn: Callable[..., Any], args: tuple, threads: int) -> None:
    """The loop of an :class:`OwnProcess`: run ``fn(*args)`` on every True received, answer
    None (or the error's text), stop on False."""
    torch.set_num_threads(threads)
    while conn.recv():
        try:
            fn(*args)
        except Exception as error:  # reported to the caller, which raises it there
            conn.send(repr(error))
        else:
            conn.send(None)


@contextmanager
def counting_masked_forwards() -> Iterator[list[int]]:
    """Count the masked images the shared mask-scoring kernel forwards in the block."""
    counted = [0]
    original = scoring.count_forwards

    def count(n: int) -> None:
        counted[0] += n
        original(n)

    scoring.count_forwards = count
    try:
        yield counted
    finally:
        scoring.count_forwards = original


def masked_images(method: str, model: torch.nn.Module, x: torch.Tensor, params: dict) -> int:
    """The masked images ``method`` asks the model for on ``x``, before any deduplication:
    the mask count it declares (``Cost.forwards``) where that count is exact or an upper
    bound reached before deduplication (GradMask's K masks per image), otherwise the masked
    forwards the kernel makes (ViT-CX's data-dependent number of clusters)."""
    explainer = xvit.make_explainer(method, **params)
    geo = xvit.get_adapter(model).geometry
    cost = explainer.cost(geo, (int(x.shape[-2]), int(x.shape[-1])))
    if method == "gradmask":
        return cost.forwards * len(x)
    if not cost.at_most:
        return cost.forwards * len(x)
    with counting_masked_forwards() as counted:
        xvit.explain(explainer, model, x)
    return counted[0]


def plain_gradient_pass(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Forward and backward of the top logit of each image, ``batch_size`` images at a time:
    gradients of the activations only (no weight gradients are asked for)."""
    for part in x.split(batch_size):
        inp = part.detach().requires_grad_(True)
        score = model(inp).max(dim=-1).values.sum()
        torch.autograd.grad(score, inp)


def plain_forwards(model: torch.nn.Module, x: torch.Tensor, total: int, batch_size: int) -> None:
    """``total`` plain forwards in batches of ``batch_size`` (copies of ``x``'s first image:
    the content of a masked image does not change the time of its forward)."""
    chunk = x[:1].expand(batch_size, *x.shape[1:]).contiguous()
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            model(chunk[: min(batch_size, total - start)])


def case_label(method: str, params: dict[str, Any]) -> str:
    """``method``, with its precision when it is not fp32 (``gradmask (bf16)``)."""
    precision = params.get("precision", "fp32")
    return method if precision == "fp32" else f"{method} ({precision})"


def irreducible_rows(
    label: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    cases: list[tuple[str, dict[str, Any]]],
    *,
    batch_size: int,
    rounds: int,
    baselines: dict[str, Callable[[], Any]] | None = None,
) -> list[dict[str, Any]]:
    """xvit against the irreducible work, per (method, parameters) case (see the module
    docstring; a bf16 case's plain passes run under the same bf16 autocast); with
    ``baselines`` (the authors-style per-image GradMask, fp32, by where it runs:
    "own_process", "xvit_process") their times too, in the same rounds, and each GradMask
    case's speed-up over each, ``speedup_vs_authors_style_<where>``."""
    jobs: dict[str, Callable[[], Any]] = {}
    counts = {}
    for method, params in cases:
        name = case_label(method, params)
        p = {"batch_size": batch_size, **params}
        counts[name] = masked_images(method, model, x, p)
        grads = xvit.get_method(method).needs_gradients
        bf16 = params.get("precision") == "bf16"

        def plain(name: str = name, grads: bool = grads, bf16: bool = bf16) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if grads:
                    plain_gradient_pass(model, x, batch_size)
                else:
                    plain_forwards(model, x, len(x), batch_size)
                plain_forwards(model, x, counts[name], batch_size)

        xvit.explain(method, model, x[:1], **p)  # warm-up outside the timing
        jobs[f"{name}: xvit"] = lambda method=method, p=p: xvit.explain(method, model, x, **p)
        jobs[f"{name}: irreducible"] = plain
    baselines = baselines or {}
    for where, job in baselines.items():
        jobs[f"gradmask: authors-style, {where}"] = job
    best = best_of(jobs, rounds)
    rows = []
    n = len(x)
    for method, params in cases:
        name = case_label(method, params)
        ours, plain_s = best[f"{name}: xvit"], best[f"{name}: irreducible"]
        row = {
            "case": label,
            "method": name,
            "precision": params.get("precision", "fp32"),
            "images": n,
            "masked_images_per_image": counts[name] / n,
            "xvit_s": ours,
            "irreducible_s": plain_s,
            "ratio_vs_irreducible": plain_s / ours,
        }
        for where in baselines if method == "gradmask" else ():
            theirs = best[f"gradmask: authors-style, {where}"]
            row[f"authors_style_s_{where}"] = theirs
            row[f"speedup_vs_authors_style_{where}"] = theirs / ours
        rows.append(row)
    return rows


def rank_agreement(
    method: str, model: torch.nn.Module, x: torch.Tensor, params: dict[str, Any]
) -> dict[str, float]:
    """Spearman correlation, per image, between ``method``'s maps in bf16 and in fp32 (same
    parameters otherwise): its mean and minimum, and the share of images with the same top
    patch."""
    fp32 = xvit.explain(method, model, x, **{**params, "precision": "fp32"}).map.flatten(1).cpu()
    bf16 = xvit.explain(method, model, x, **{**params, "precision": "bf16"}).map.flatten(1).cpu()
    rho = spearman(fp32, bf16)
    same_top = (fp32.argmax(1) == bf16.argmax(1)).double().mean()
    return {
        "spearman_mean": float(rho.mean()),
        "spearman_min": float(rho.min()),
        "same_top_patch": float(same_top),
    }


def batching_rows(
    label: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    methods: dict[str, dict[str, Any]],
    *,
    rounds: int,
) -> list[dict[str, Any]]:
    """Each method on ``x`` in one call against one image per call, in the same rounds."""
    jobs: dict[str, Callable[[], Any]] = {}
    for method, params in methods.items():
        xvit.explain(method, model, x[:1], **params)  # warm-up

        def one_by_one(method: str = method, params: dict = params) -> None:
            for i in range(len(x)):
                xvit.explain(method, model, x[i : i + 1], **params)

        jobs[f"{method}: batched"] = lambda m=method, p=params: xvit.explain(m, model, x, **p)
        jobs[f"{method}: one at a time"] = one_by_one
    best = best_of(jobs, rounds)
    return [
        {
            "case": label,
            "method": method,
            "images": len(x),
            "params": params,
            "batched_s_per_image": best[f"{method}: batched"] / len(x),
            "one_at_a_time_s_per_image": best[f"{method}: one at a time"] / len(x),
            "batched_gain": best[f"{method}: one at a time"] / best[f"{method}: batched"],
        }
        for method, params in methods.items()
    ]
