"""Progress and cost estimates: the display, xvit.explain, declared costs, run_benchmark
(``xvit explain`` is tested in test_cli.py).

No assertion here depends on how fast the machine is: where an estimate matters, the measured
time per forward is replaced by a fixed one.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import xvit
import xvit.api
from conftest import MODEL_FACTORIES, USABLE_METHODS, model_input
from xvit import _progress
from xvit.bench import run_benchmark
from xvit.methods.gradmask import GradMask
from xvit.methods.vitcx import ViTCX

BUILTINS = [
    name for name in USABLE_METHODS if xvit.get_method(name).__module__.startswith("xvit.methods.")
]


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def quick(method: str) -> xvit.Explainer:
    return xvit.make_explainer(method, **xvit.get_method(method).quick_params)


def fixed_speed(monkeypatch: pytest.MonkeyPatch, seconds_per_forward: float) -> None:
    """Make explain's measure of this device's speed return a fixed time per forward."""
    real = xvit.api.timed_logits

    def timed(adapter, x):
        return real(adapter, x)[0], seconds_per_forward

    monkeypatch.setattr(xvit.api, "timed_logits", timed)


def counts(text: str, unit: str) -> list[float]:
    """The ``done`` of every ``done/total unit`` in progress lines, in order."""
    return [float(m) for m in re.findall(rf"(\d+(?:\.\d+)?)/\d+ {unit}", text)]


# --- the display ---------------------------------------------------------------------------
def test_plain_lines_off_a_terminal() -> None:
    log = io.StringIO()
    with _progress.Progress(50, desc="xvit job", unit="image", stream=log) as p:
        for _ in range(50):
            p.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 11  # one per tenth of the work at most, then the last one
    assert all(line.startswith("xvit job: ") for line in lines)
    assert "about" in lines[0] and "left" in lines[0]  # counts, rate and time left
    assert lines[-1].startswith("xvit job: 50/50 images (100%) in ")


def test_plain_lines_also_come_every_interval() -> None:
    log = io.StringIO()
    p = _progress.Progress(1000, desc="xvit job", stream=log, interval=0.0)
    for _ in range(3):
        p.update(1)  # far below a tenth, but the interval has passed
    assert counts(log.getvalue(), "images") == [1, 2, 3]


def test_bar_frames_on_a_terminal() -> None:
    tty = FakeTerminal()
    with _progress.Progress(4, desc="xvit job", stream=tty) as p:
        p.set_label("rise")
        p.write("a notice")
        for _ in range(4):
            p.update(1)
    text = tty.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n")
    assert "xvit job [rise]:" in text and "|" in text and "4/4" in text
    assert "a notice\n" in text


def test_disabled_is_silent() -> None:
    for stream in (io.StringIO(), FakeTerminal()):
        p = _progress.Progress(3, desc="x", stream=stream, enabled=False)
        p.write("notice")
        p.update(2)
        p.close()
        assert stream.getvalue() == ""


# --- xvit.explain --------------------------------------------------------------------------
def test_explain_progress_true_reports_per_image(timm_vit, capsys, monkeypatch) -> None:
    fixed_speed(monkeypatch, 1e-6)  # a short call: progress without an estimate line
    x = model_input(timm_vit, batch=3)
    xvit.explain("rise", timm_vit, x, num_masks=32, batch_size=8, progress=True)
    err = capsys.readouterr().err
    done = counts(err, "images")
    assert "\r" not in err and err.startswith("xvit rise: ")
    assert done == sorted(done) and done[-1] == 3
    # the masked forwards move it within the one call: fractions of images along the way
    assert len({d for d in done if 0 < d < 3}) >= 3
    assert any(d != int(d) for d in done)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_gradient_passes_move_progress_within_a_call(
    method: str, timm_vit, capsys, monkeypatch
) -> None:
    # methods of many gradient passes per image report them as they go, like the kernel
    fixed_speed(monkeypatch, 1e-6)
    x = model_input(timm_vit, batch=2)
    params = {"n_steps": 6} if method == "integrated_gradients" else {"n_samples": 6}
    xvit.explain(method, timm_vit, x, batch_size=4, progress=True, **params)
    done = counts(capsys.readouterr().err, "images")
    assert done == sorted(done) and done[-1] == 2
    assert len({d for d in done if 0 < d < 2}) >= 2


def test_explain_is_silent_for_short_calls_and_with_progress_false(
    timm_vit, capsys, monkeypatch
) -> None:
    fixed_speed(monkeypatch, 1e-6)
    x = model_input(timm_vit, batch=2)
    xvit.explain("gradmask", timm_vit, x)  # default: shown only for a long call
    assert capsys.readouterr().err == ""
    fixed_speed(monkeypatch, 1.0)  # now every call looks long
    xvit.explain("rise", timm_vit, x, num_masks=32, progress=False)
    assert capsys.readouterr() == ("", "")
    with pytest.raises(xvit.ParameterError, match="progress must be"):
        xvit.explain("rise", timm_vit, x, progress="yes")


def test_estimate_line_for_a_long_call_only(timm_vit, capsys, monkeypatch) -> None:
    fixed_speed(monkeypatch, 0.1)
    x = model_input(timm_vit, batch=1)
    xvit.explain("rise", timm_vit, x, num_masks=200)  # 200 forwards x 0.1 s: long
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first == "xvit: rise on 1 image: 200 forwards, about 20 s on cpu"
    assert rest and rest[-1].startswith("xvit rise: 1/1 image (100%)")
    xvit.explain("attention", timm_vit, x)  # one forward: short, silent
    xvit.explain("rise", timm_vit, x, num_masks=20)  # 2 s: short, silent
    assert capsys.readouterr().err == ""
    fixed_speed(monkeypatch, 1.0)
    xvit.explain("gradmask", timm_vit, model_input(timm_vit, batch=2))
    first = capsys.readouterr().err.splitlines()[0]
    blocks = xvit.get_adapter(timm_vit).geometry.num_blocks - 1  # GradMask's default
    k = 3 * blocks * 4
    seconds = 2 * (k + 3)  # a gradient pass counts as three forwards
    assert first == (
        f"xvit: gradmask on 2 images: up to {2 * k} forwards and 2 gradient passes, about "
        f"{seconds} s on cpu"
    )


@pytest.mark.parametrize("method", BUILTINS)
def test_maps_do_not_depend_on_progress(method: str, timm_vit, capsys, monkeypatch) -> None:
    fixed_speed(monkeypatch, 1.0)  # long: the estimate's extra timing forward runs too
    x = model_input(timm_vit, batch=2)
    quiet = xvit.explain(quick(method), timm_vit, x, progress=False).map
    shown = xvit.explain(quick(method), timm_vit, x, progress=True).map
    assert torch.equal(quiet, shown)
    assert "2/2 images (100%)" in capsys.readouterr().err
    assert _progress.current_display() is None and _progress._METER.get() is None


def test_nothing_is_left_behind_after_an_error(timm_vit, capsys, monkeypatch) -> None:
    fixed_speed(monkeypatch, 1e-6)

    class Halfway(xvit.Explainer):
        name = "halfway-test"

        def compute(self, adapter, inputs, target):
            _progress.count_forwards(1)
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        xvit.explain(Halfway(), timm_vit, model_input(timm_vit, batch=2), progress=True)
    assert _progress.current_display() is None and _progress._METER.get() is None
    # one forward of the two expected (one per image, the default cost): half-way, then it stops
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("xvit halfway-test: 1/2 images (50%) in ")


# --- declared costs against the passes actually made ----------------------------------------
def passes(model: torch.nn.Module, run: Callable[[], object]) -> tuple[int, int]:
    """Images through the model's first block without and with gradients during ``run``."""
    seen = {False: 0, True: 0}

    def hook(_module, args):
        seen[torch.is_grad_enabled()] += int(args[0].shape[0])

    handle = xvit.get_adapter(model).blocks()[0].norm1.register_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return seen[False], seen[True]


@pytest.mark.parametrize("model_name", ["timm-vit", "hf-deit-teacher"])
@pytest.mark.parametrize("method", BUILTINS)
def test_declared_cost_counts_the_passes(method: str, model_name: str) -> None:
    model = MODEL_FACTORIES[model_name]()
    x = model_input(model, batch=2)
    explainer = quick(method)
    cost = explainer.cost(xvit.get_adapter(model).geometry, tuple(x.shape[-2:]))
    forwards, gradient = passes(model, lambda: xvit.explain(explainer, model, x, progress=False))
    forwards -= len(x)  # explain's own clean forward, for the targets
    assert gradient == cost.gradient_passes * len(x)
    if cost.at_most:
        assert forwards <= cost.forwards * len(x)
    else:
        assert forwards == cost.forwards * len(x)


def test_gradmask_forwards_every_distinct_mask_but_the_full_one(timm_vit) -> None:
    x = model_input(timm_vit, batch=3)
    adapter = xvit.get_adapter(timm_vit)
    target = timm_vit(x).argmax(-1)
    gm = GradMask()
    masks = gm.masks(adapter, x, target)
    distinct = sum(
        len({tuple(m.flatten().tolist()) for m in image if not m.bool().all()}) for image in masks
    )
    forwards, gradient = passes(timm_vit, lambda: xvit.explain(gm, timm_vit, x, progress=False))
    cost = gm.cost(adapter.geometry, tuple(x.shape[-2:]))
    assert masks.shape[1] == cost.forwards  # K = 3 x |blocks| x M, the declared bound
    assert forwards - len(x) == distinct <= cost.forwards * len(x)
    assert gradient == len(x)


def test_vitcx_forwards_two_per_cluster_and_one_per_image(timm_vit) -> None:
    x = model_input(timm_vit, batch=2)
    adapter = xvit.get_adapter(timm_vit)
    merged = ViTCX(distance_threshold=0.3)
    clusters = sum(len(c) for c in merged.cluster_masks(adapter, x))
    forwards, _ = passes(timm_vit, lambda: xvit.explain(merged, timm_vit, x, progress=False))
    assert forwards - len(x) == len(x) + 2 * clusters + len(x)
    every = ViTCX(distance_threshold=0.0)  # no merging: exactly D masks, the declared count
    cost = every.cost(adapter.geometry, tuple(x.shape[-2:]))
    assert not cost.at_most
    forwards, _ = passes(timm_vit, lambda: xvit.explain(every, timm_vit, x, progress=False))
    assert forwards - len(x) == cost.forwards * len(x)


# --- run_benchmark -------------------------------------------------------------------------
class Sample:
    def __init__(self, i: int) -> None:
        rng = np.random.default_rng(i)
        self.image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        self.label = int(rng.integers(0, 5))
        self.boxes = ((4.0, 4.0, 20.0, 20.0),)
        self.id = f"img-{i}"


def test_run_benchmark_with_progress_false_prints_nothing(timm_vit, capsys) -> None:
    data = [Sample(i) for i in range(3)]
    res = run_benchmark(
        timm_vit, data, methods="random,attention", metrics="pointing_game", n=3, progress=False
    )
    assert capsys.readouterr() == ("", "")
    assert "| attention |" in res.table


def test_bench_off_a_terminal_writes_lines_and_the_table(timm_vit, capsys) -> None:
    data = [Sample(i) for i in range(4)]
    res = run_benchmark(
        timm_vit,
        data,
        methods=["attention", GradMask(batch_size=8)],
        metrics="pointing_game",
        n=4,
        images_per_call=4,
        progress=True,
    )
    out, err = capsys.readouterr()
    assert res.table in out
    assert "\r" not in err
    lines = err.splitlines()
    assert all(line.startswith("xvit bench") for line in lines)
    assert lines[-1].startswith("xvit bench [gradmask]: 8/8 expl (100%)")
    # GradMask's masked forwards move the bar within its one call on the batch of 4 images
    within = {d for d in counts(err.split("[gradmask]", 1)[1], "expl") if 4 < d < 8}
    assert len(within) >= 2


def test_bench_on_a_terminal_draws_a_bar_naming_the_method(timm_vit, monkeypatch) -> None:
    tty = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", tty)
    rise = quick("rise")
    run_benchmark(
        timm_vit, [Sample(0)], methods=[rise], metrics="pointing_game", n=1, progress=True
    )
    text = tty.getvalue()
    assert "\r" in text and "xvit bench [rise]:" in text and text.endswith("\n")
