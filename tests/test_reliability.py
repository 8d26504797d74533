"""Reliability under bad input and faults (issue 6).

Every registered method on every adapter: a failing call (bad target, unknown parameter, a
model that raises or returns NaN part-way through the call, Ctrl-C) gives one xvit error and
leaves the model exactly as it was; out-of-range parameters are refused, probed from each
method's own defaults; concurrent calls on one model give the sequential results; checkpoints
are never unpickled; an interrupted ``xvit bench`` process resumes without recomputing.
Methods come from the registry, so a new method is covered without editing this file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import xvit
from conftest import MODEL_FACTORIES, USABLE_METHODS, model_input
from model_state import snapshot
from xvit.cli import main

METHODS = USABLE_METHODS
MODELS = sorted(MODEL_FACTORIES)


def quick(method: str) -> dict[str, Any]:
    """Cheap, valid parameters for ``method`` (its ``quick_params``, plus a seed if random)."""
    cls = xvit.get_method(method)
    params = dict(cls.quick_params)
    if cls.randomized:
        params["seed"] = 0
    return params


def dirty(model: torch.nn.Module) -> None:
    """State a careless library could lose: train mode, a frozen parameter, a .grad."""
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.25)


class Fault:
    """Breaks the model's k-th forward half-way through (inside block 1's first norm).

    ``kind`` is "raise" (a RuntimeError, as a buggy custom layer would), "nan" (the first
    image of that forward becomes NaN, as an overflowing layer would) or "interrupt"
    (KeyboardInterrupt, as Ctrl-C would). The hook counts every forward, so ``calls`` after a
    normal call is the number of forwards the call ran.
    """

    def __init__(self, model: torch.nn.Module, kind: str, at: int | None) -> None:
        self.kind, self.at, self.calls = kind, at, 0
        module = xvit.get_adapter(model).blocks()[1].norm1
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, _module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> Any:
        self.calls += 1
        if self.calls != self.at:
            return None
        if self.kind == "raise":
            raise RuntimeError("injected fault")
        if self.kind == "interrupt":
            raise KeyboardInterrupt
        first = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
        first[0] = True
        return torch.where(first.view(-1, *[1] * (out.dim() - 1)), float("nan"), out)

    def remove(self) -> None:
        self.handle.remove()


@contextmanager
def fault(model: torch.nn.Module, kind: str, at: int | None) -> Iterator[Fault]:
    f = Fault(model, kind, at)
    try:
        yield f
    finally:
        f.remove()


# --- 1 and 2: failures leave the model as it was and give one clear error ----------------
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_failure_restores_the_model(method: str, model_name: str) -> None:
    model = MODEL_FACTORIES[model_name]()
    dirty(model)
    x = model_input(model, batch=2)
    params = quick(method)
    if "batch_size" in xvit.get_method(method).defaults():
        params["batch_size"] = 5  # several masked forwards, so a fault can hit the middle
    before = snapshot(model)

    with pytest.raises(xvit.InvalidInputError, match="out of range"):
        xvit.explain(method, model, x, target=xvit.get_adapter(model).num_classes, **params)
    assert snapshot(model) == before
    with pytest.raises(xvit.ParameterError, match="no_such_param"):
        xvit.explain(method, model, x, no_such_param=1, **params)
    assert snapshot(model) == before

    # the forward to break: the third (inside the method's own forwards: for GradMask the
    # masked scoring), or the last one for methods that run fewer
    at = 3
    with fault(model, "raise", at) as probe, suppress(xvit.ModelOutputError):
        xvit.explain(method, model, x, **params)
    if probe.calls < at:  # the call ran fewer forwards and succeeded: break the last one
        at = probe.calls
    for kind in ("raise", "nan", "interrupt"):
        with fault(model, kind, at) as f:
            before = snapshot(model)  # with the fault hook in place
            if kind == "interrupt":
                with pytest.raises(KeyboardInterrupt):  # passes through, unwrapped
                    xvit.explain(method, model, x, **params)
            else:
                with pytest.raises(xvit.ModelOutputError) as info:
                    xvit.explain(method, model, x, **params)
                message = str(info.value)
                assert message.startswith(f"{method}: ") and "\n" not in message
                if kind == "raise":
                    assert "raised RuntimeError: injected fault" in message
                    assert isinstance(info.value.__cause__, RuntimeError)
                else:
                    assert "NaN" in message and "1 of " in message
            # a raise stops at once; NaN in a masked forward is found when the batch of
            # masked copies is done (one check per scoring call, not one sync per forward)
            assert f.calls == at if kind != "nan" else f.calls >= at
            assert snapshot(model) == before, f"{kind} at forward {at} left the model changed"


def test_errors_of_xvit_and_out_of_memory_pass_through_unwrapped(timm_vit) -> None:
    x = model_input(timm_vit)
    for error in (xvit.CaptureError("from a hook"), torch.cuda.OutOfMemoryError("out of memory")):

        def hook(_m: Any, _i: Any, _o: Any, error: BaseException = error) -> None:
            raise error

        handle = timm_vit.blocks[0].register_forward_hook(hook)
        try:
            with pytest.raises(type(error)) as info:
                xvit.explain("gradmask", timm_vit, x)
        finally:
            handle.remove()
        assert info.value is error


def test_adapter_logits_wraps_faults_and_checks_finiteness(any_model) -> None:
    adapter = xvit.get_adapter(any_model)
    x = model_input(any_model, batch=3)
    torch.testing.assert_close(adapter.logits(x), adapter.forward_logits(x))
    with (
        fault(any_model, "nan", 1),
        pytest.raises(xvit.ModelOutputError, match="NaN or infinite values for 1 of 3"),
    ):
        adapter.logits(x)
    with fault(any_model, "nan", 1):  # the unchecked form returns the NaN row as it is
        out = adapter.logits(x, check_finite=False)
    assert out[0].isnan().all() and torch.isfinite(out[1:]).all()
    with (
        fault(any_model, "raise", 1),
        pytest.raises(xvit.ModelOutputError, match=r"RuntimeError: injected fault") as info,
    ):
        adapter.logits(x)
    assert "3 x 3 x" in str(info.value)  # the batch it failed on
    assert isinstance(info.value.__cause__, RuntimeError)


def test_nan_from_the_model_on_a_clean_image_names_the_method(timm_vit) -> None:
    with (
        fault(timm_vit, "nan", 1),
        pytest.raises(xvit.ModelOutputError, match=r"^rollout: .*NaN.* 1 of 2 inputs"),
    ):
        xvit.explain("rollout", timm_vit, model_input(timm_vit))


# --- 3: parameters out of range, probed from each method's defaults ----------------------
#: Known ranges, by parameter name (shared names mean the same in every method).
RANGE_PROBES: dict[str, list[Any]] = {
    "discard_ratio": [-0.1, 1.0, 1.5],
    "keep_prob": [0.0, -0.5, 1.01],
    "distance_threshold": [-0.01, 2.01],
    "noise_std": [-0.1],
}


#: Integer parameters that index blocks rather than count something.
LAYER_INDICES = {"start_layer"}


def bad_values(name: str, default: Any) -> list[Any]:
    """Values no method should accept for a parameter with this name and default."""
    common: list[Any] = [object()]
    if name == "batch_size":
        return [*common, 0, -1, 2.5, "many", True, None]
    if name == "seed":  # None is a valid seed for some methods (fresh randomness)
        return [*common, -1, 2.5, "3", True, float("nan")]
    if isinstance(default, bool):
        return [*common, "yes", 2, None]
    if name in LAYER_INDICES:  # a block index: 0 and negatives (from the end) are valid
        return [*common, 2.5, "3", True, None, 10**6, -(10**6)]
    if isinstance(default, int):  # counts: masks, grid cells, masks per layer
        return [*common, 0, -3, 2.5, "3", True, None]
    if isinstance(default, float):
        nan, inf = float("nan"), float("inf")
        return [*common, nan, inf, -inf, "0.5", True, None, *RANGE_PROBES.get(name, [])]
    if isinstance(default, str):
        return [*common, "no-such-choice", 3, None]
    if default is None:  # a block/layer selection: checked against the model
        return [*common, "no-such-choice", 2.5, 10**6, -(10**6), []]
    return common


PROBES = [
    (method, name, value)
    for method in METHODS
    for name, default in xvit.get_method(method).defaults().items()
    for value in bad_values(name, default)
]


def test_range_probes_are_about_real_parameters() -> None:
    names = {n for m in METHODS for n in xvit.get_method(m).defaults()}
    assert set(RANGE_PROBES) <= names, set(RANGE_PROBES) - names


@pytest.fixture(scope="module")
def shared_vit() -> torch.nn.Module:
    """One tiny ViT for the many quick probes (each checks it is left as it was)."""
    return MODEL_FACTORIES["timm-vit"]()


def _probe_id(value: Any) -> str:
    """A value's repr, the same in every process (a bare object's repr holds its address, and
    pytest-xdist's workers must collect the same test ids)."""
    return "object()" if type(value) is object else repr(value)


@pytest.mark.parametrize(("method", "name", "value"), PROBES, ids=_probe_id)
def test_bad_parameter_values_are_refused(method: str, name: str, value: Any, shared_vit) -> None:
    params = {**quick(method), name: value}
    before = snapshot(shared_vit)
    with pytest.raises(xvit.ParameterError) as info:
        xvit.explain(method, shared_vit, model_input(shared_vit, batch=1), **params)
    assert name in str(info.value), f"the message does not name {name!r}: {info.value}"
    assert snapshot(shared_vit) == before


# --- randomised methods are reproducible from a seed ---------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_randomized_methods_are_reproducible_from_their_seed(method: str, timm_vit) -> None:
    cls = xvit.get_method(method)
    assert cls.randomized == ("seed" in cls.param_names()), "randomized must match a seed"
    if not cls.randomized:
        return
    x = model_input(timm_vit)
    params = {**quick(method), "seed": 5}
    first = xvit.explain(method, timm_vit, x, target=[0, 1], **params).map
    torch.manual_seed(123)  # the global generator must not matter
    again = xvit.explain(method, timm_vit, x, target=[0, 1], **params).map
    other = xvit.explain(method, timm_vit, x, target=[0, 1], **{**params, "seed": 6}).map
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# --- 3: input dtype and device ------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_input_dtype_is_cast_to_the_model(method: str, timm_vit) -> None:
    x = model_input(timm_vit)
    reference = xvit.explain(method, timm_vit, x, target=[1, 3], **quick(method)).map
    as_double = xvit.explain(method, timm_vit, x.double(), target=[1, 3], **quick(method)).map
    torch.testing.assert_close(as_double.float(), reference, rtol=1e-5, atol=1e-6)
    model64 = MODEL_FACTORIES["timm-vit"]().double()
    on_double = xvit.explain(method, model64, x, target=[1, 3], **quick(method)).map
    assert torch.isfinite(on_double).all() and on_double.shape == reference.shape


def test_a_meta_device_model_is_refused_clearly() -> None:
    with torch.device("meta"):
        model = MODEL_FACTORIES["timm-vit"]()
    with pytest.raises(xvit.UnsupportedModelError, match="meta device"):
        xvit.explain("gradmask", model, torch.randn(1, 3, 32, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_input_on_another_device_is_moved(method: str) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model)
    on_cpu = xvit.explain(method, model, x, target=[1, 3], **quick(method)).map
    model.cuda()
    moved_in = xvit.explain(method, model, x, target=[1, 3], **quick(method)).map
    assert moved_in.device.type == "cpu"
    moved_back = xvit.explain(method, model.cpu(), x.cuda(), target=[1, 3], **quick(method)).map
    assert moved_back.device.type == "cuda"
    torch.testing.assert_close(moved_in, on_cpu, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(moved_back.cpu(), on_cpu, rtol=1e-5, atol=1e-6)


# --- 4: two threads, one model -------------------------------------------------------------
def run_together(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run ``jobs`` in threads released at the same moment; re-raise the first error."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        try:
            start.wait()
            results[i] = jobs[i]()
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("model_name", ["timm-vit", "hf-deit-teacher"])
@pytest.mark.parametrize("method", METHODS)
def test_two_threads_get_their_own_maps(method: str, model_name: str) -> None:
    model = MODEL_FACTORIES[model_name]()
    dirty(model)
    # different images, batch sizes and targets, so crossed captures would show
    xa, xb = model_input(model, batch=1, seed=1), model_input(model, batch=3, seed=2)
    params = quick(method)
    before = snapshot(model)
    alone_a = xvit.explain(method, model, xa, target=[0], **params).map
    alone_b = xvit.explain(method, model, xb, target=[4, 2, 1], **params).map
    for _ in range(2):
        a, b = run_together(
            [
                lambda: xvit.explain(method, model, xa, target=[0], **params).map,
                lambda: xvit.explain(method, model, xb, target=[4, 2, 1], **params).map,
            ]
        )
        torch.testing.assert_close(a, alone_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, alone_b, rtol=1e-5, atol=1e-6)
    assert snapshot(model) == before


def test_threads_using_captures_and_metrics_directly(timm_vit) -> None:
    from xvit.methods._attention import capture_attentions
    from xvit.methods.gradmask import GradMask
    from xvit.metrics import Deletion

    adapter = xvit.get_adapter(timm_vit)
    xa, xb = model_input(timm_vit, batch=2, seed=3), model_input(timm_vit, batch=1, seed=4)
    ta, tb = torch.tensor([1, 2]), torch.tensor([3])
    gm = GradMask(masks_per_layer=2)
    saliency = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    deletion = Deletion()
    jobs = [
        lambda: gm.masks(adapter, xa, ta),  # Capture used outside xvit.explain
        lambda: capture_attentions(adapter, xb)[-1],  # eager attention flags switched
        lambda: deletion(timm_vit, xb, tb, saliency).scores,  # the metrics' forwards
    ]
    alone = [job() for job in jobs]
    before = snapshot(timm_vit)
    for _ in range(2):
        together = run_together(jobs)
        for got, want in zip(together, alone):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert snapshot(timm_vit) == before


# --- 5: checkpoints are never unpickled ---------------------------------------------------
class _Trap:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on any unpickling call; torch.load only with weights_only=True."""

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("xvit unpickled a file")

    real_load = torch.load

    def safe_load(*a: Any, **k: Any) -> Any:
        assert k.get("weights_only") is True, "torch.load without weights_only=True"
        return real_load(*a, **k)

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", safe_load)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".pkl", ".bin", ".ckpt"])
def test_pickled_checkpoints_are_refused(suffix: str, tmp_path: Path, no_unpickling) -> None:
    sentinel = tmp_path / "unpickled"
    path = tmp_path / f"model{suffix}"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Trap(sentinel)}, f)
    with pytest.raises(xvit.ModelLoadError, match="never unpickles") as info:
        xvit.load_model(str(path))
    assert "safetensors" in str(info.value)
    assert not sentinel.exists()


def test_a_pickle_named_safetensors_is_refused(tmp_path: Path, no_unpickling) -> None:
    sentinel = tmp_path / "unpickled"
    path = tmp_path / "model.safetensors"
    torch.save({"w": _Trap(sentinel)}, path)
    with pytest.raises(xvit.ModelLoadError, match="not a readable safetensors file"):
        xvit.load_model(str(path))
    assert not sentinel.exists()


def test_hf_folder_with_pickled_weights_is_not_unpickled(tmp_path: Path, no_unpickling) -> None:
    sentinel = tmp_path / "unpickled"
    folder = tmp_path / "hf"
    MODEL_FACTORIES["hf-vit"]().save_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save({"w": _Trap(sentinel)}, folder / "pytorch_model.bin")
    with pytest.raises(xvit.ModelLoadError) as info:
        xvit.load_model(str(folder))
    assert str(folder) in str(info.value)
    assert not sentinel.exists()


def _checkpoint(path: Path, **meta: str) -> None:
    kwargs = dict(num_classes=5, embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8)
    xvit.save_checkpoint(
        MODEL_FACTORIES["timm-vit"](),
        path,
        timm_name="vit_tiny_patch16_224",
        model_kwargs=kwargs,
        preprocessing=xvit.Preprocessing(size=(32, 32)),
        extra=meta or None,
    )


def _rewrite_metadata(path: Path, **changes: str | None) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(load_file(str(path)), str(path), metadata=meta)


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "empty": lambda p: p.write_bytes(b""),
    "random bytes": lambda p: p.write_bytes(bytes(range(256)) * 8),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "header not json": lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"),
    "flipped header length": lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:]),
    "no xvit metadata": lambda p: _rewrite_metadata(p, xvit_format=None),
    "model_kwargs missing": lambda p: _rewrite_metadata(p, model_kwargs=None),
    "model_kwargs not json": lambda p: _rewrite_metadata(p, model_kwargs="{depth: 3"),
    "unknown timm model": lambda p: _rewrite_metadata(p, timm_name="no_such_vit"),
    "weights of another shape": lambda p: _rewrite_metadata(
        p,
        model_kwargs=json.dumps(
            dict(num_classes=5, embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8)
        ),
    ),
    "preprocessing not json": lambda p: _rewrite_metadata(p, preprocessing="[1, 2"),
    "preprocessing wrong fields": lambda p: _rewrite_metadata(p, preprocessing='{"colour": 1}'),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_safetensors_gives_model_load_error(corruption: str, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    _checkpoint(path)
    xvit.load_model(str(path))  # readable before the damage
    CORRUPTIONS[corruption](path)
    with pytest.raises(xvit.ModelLoadError) as info:
        xvit.load_model(str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message


# --- 7: xvit bench killed part-way, in a real process -------------------------------------
def _bench_args(ckpt: Path, out: Path) -> list[str]:
    return [
        "bench",
        "--model",
        str(ckpt),
        "--data",
        "digits:n=6,clutter=2",
        "--methods",
        "gradmask,random",
        "--metrics",
        "deletion,pointing_game",
        "--n",
        "6",
        "--images-per-call",
        "1",
        "--out",
        str(out),
    ]


def _bench_cmd(ckpt: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "xvit", *_bench_args(ckpt, out)]


def _bench_env() -> dict[str, str]:
    """This environment, with torch on as many threads as in this process: the processes then
    do the arithmetic of the run made in this process."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _comparable(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Records by (image, method) without the timing, which differs between runs."""
    return {(r["id"], r["method"]): {k: v for k, v in r.items() if k != "time_s"} for r in records}


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm

    torch.manual_seed(0)
    kwargs = dict(num_classes=10, embed_dim=32, depth=2, num_heads=2, img_size=64, patch_size=16)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    path = tmp_path_factory.mktemp("bench") / "digits-tiny.safetensors"
    xvit.save_checkpoint(
        model,
        path,
        timm_name="vit_tiny_patch16_224",
        model_kwargs=kwargs,
        preprocessing=xvit.Preprocessing(size=(64, 64), mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    return path


def _sigint_as_in_a_terminal() -> None:
    """In the child, before it runs the command: SIGINT at its default action, as in a terminal.

    A shell starts a background job with SIGINT ignored and children inherit that; Python then
    never raises KeyboardInterrupt, and a test run in the background would see Ctrl-C ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_until(cmd: list[str], results: Path, lines: int, sig: int) -> int:
    """Start ``cmd``, send ``sig`` once ``results`` holds ``lines`` records; the exit code."""
    env = {**_bench_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=_sigint_as_in_a_terminal,  # sets one signal: takes no lock a thread may hold
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= lines:
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, f"the run finished before it was interrupted: {err!r}"
    if sig == signal.SIGINT:  # Ctrl-C: a short note and the shell's code for it, no traceback
        assert proc.returncode == 130 and b"interrupted" in err, err.decode()[-500:]
        assert b"Traceback" not in err
    return proc.returncode


@pytest.fixture(scope="module")
def uninterrupted(digits_checkpoint: Path) -> Path:
    """The results folder of a bench run that was left alone: the same command, in this
    process (a process of its own would spend most of its time importing)."""
    full = digits_checkpoint.parent / "uninterrupted"
    done = CliRunner().invoke(main, _bench_args(digits_checkpoint, full))
    assert done.exit_code == 0, done.output
    return full


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_bench_process_resumes_without_recomputing(
    sig: int, digits_checkpoint: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    full = uninterrupted
    expected = _comparable(_records(full / "results.jsonl"))
    assert len(expected) == 12

    out = tmp_path / "interrupted"
    results = out / "results.jsonl"
    _run_until(_bench_cmd(digits_checkpoint, out), results, lines=3, sig=sig)
    kept = results.read_bytes()
    finished = kept[: kept.rfind(b"\n") + 1]  # a kill may cut the last line short
    first = _records(results) if kept.endswith(b"\n") else None
    assert 3 <= finished.count(b"\n") < 12

    again = subprocess.run(
        _bench_cmd(digits_checkpoint, out), capture_output=True, timeout=300, env=_bench_env()
    )
    assert again.returncode == 0, again.stderr.decode()
    final_bytes = results.read_bytes()
    assert final_bytes.startswith(finished), "finished results were rewritten"
    final = _records(results)
    pairs = [(r["id"], r["method"]) for r in final]
    assert len(pairs) == len(set(pairs)) == 12, "a finished image was computed again"
    if first is not None:
        assert final[: len(first)] == first
    assert _comparable(final) == expected
    summary = json.loads((out / "summary.json").read_text())["methods"]
    reference = json.loads((full / "summary.json").read_text())["methods"]
    assert summary.keys() == reference.keys() == {"gradmask", "random"}
    for method, want in reference.items():
        for key in ("images", "metrics", "mean_curves"):
            assert _close(summary[method][key], want[key]), (method, key)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)
