"""Guards of the fast paths (issue 18): the "auto" batch backs off on out-of-memory errors,
the timm last-block shortcut steps aside for user hooks, ``explain`` moves each input group to
the device once, and the benchmark's explanation time holds no clean forward."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from xvit._forward import reset_auto_limits
from xvit.bench import run_benchmark
from xvit.data import get_dataset
from xvit.methods._scoring import score_masks
from xvit.metrics import Insertion

#: The simulated device holds this many images per forward.
FITS = 8


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    reset_auto_limits()
    yield
    reset_auto_limits()


def _out_of_memory_above(model: nn.Module, limit: int) -> Any:
    """A hook that raises CUDA's out-of-memory error for a forward of more than ``limit``
    images, as a GPU of that size would; it records every batch size it let through."""
    seen: list[int] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        n = int(args[0].shape[0])
        if n > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated, {n} images)")
        seen.append(n)

    handle = model.patch_embed.register_forward_pre_hook(hook)
    return handle, seen


@pytest.mark.parametrize(
    ("method", "params"),
    [("gradmask", {}), ("rise", {"num_masks": 20, "seed": 3})],
)
def test_auto_batch_halves_on_out_of_memory_with_equal_results(
    method: str, params: dict[str, Any]
) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=2)
    handle, seen = _out_of_memory_above(model, FITS)
    try:
        fixed = xvit.explain(method, model, x, batch_size=FITS, **params).map
        seen.clear()
        with pytest.warns(ResourceWarning, match="out of memory") as caught:
            auto = xvit.explain(method, model, x, batch_size="auto", **params).map
        # a second call starts at the learnt limit: no more errors, no warning
        again = xvit.explain(method, model, x, batch_size="auto", **params).map
    finally:
        handle.remove()
    assert len([w for w in caught if "out of memory" in str(w.message)]) == 1  # said once
    assert max(seen) <= FITS
    torch.testing.assert_close(auto, fixed, rtol=0, atol=0)
    torch.testing.assert_close(again, fixed, rtol=0, atol=0)


def test_auto_batch_backs_off_in_metrics_too() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=2)
    maps = torch.rand(2, *x.shape[-2:])
    handle, _seen = _out_of_memory_above(model, FITS)
    try:
        fixed = Insertion(batch_size=FITS)(model, x, None, maps).scores
        with pytest.warns(ResourceWarning, match="out of memory"):
            auto = Insertion(batch_size="auto")(model, x, None, maps).scores
    finally:
        handle.remove()
    torch.testing.assert_close(auto, fixed, rtol=0, atol=0)


def test_a_fixed_batch_that_does_not_fit_is_not_changed() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    handle, _seen = _out_of_memory_above(model, FITS)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            xvit.explain("rise", model, model_input(model), num_masks=40, batch_size=32)
    finally:
        handle.remove()


def _timm_last_block_parts(model: Any) -> dict[str, nn.Module]:
    last = model.blocks[-1]
    return {
        "model": model,
        "last-block": last,
        "last-qkv": last.attn.qkv,
        "last-mlp": last.mlp,
        "final-norm": model.norm,
    }


@pytest.mark.parametrize("where", ["model", "last-block", "last-qkv", "last-mlp", "final-norm"])
def test_timm_shortcut_falls_back_when_user_hooks_are_present(where: str) -> None:
    model: Any = MODEL_FACTORIES["timm-vit"]()
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=2)
    with torch.no_grad():
        assert adapter.family.prefix_rows_logits(model, x) is not None  # the shortcut applies
    seen: list[int] = []
    handle = _timm_last_block_parts(model)[where].register_forward_pre_hook(
        lambda m, args: seen.append(int(args[0].shape[1]) if args[0].dim() == 3 else -1)
    )
    try:
        with torch.no_grad():
            assert adapter.family.prefix_rows_logits(model, x) is None
        seen.clear()
        probs = score_masks(adapter, x, torch.tensor([0, 1]), torch.ones(3, 2, 2))
    finally:
        handle.remove()
    assert seen, "the user's hook did not run during scoring"
    with torch.no_grad():
        expected = adapter.forward_logits(x).softmax(-1)[[0, 1], [0, 1]]
    torch.testing.assert_close(probs, expected[:, None].expand(2, 3), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # back once the hook is gone
        assert adapter.family.prefix_rows_logits(model, x) is not None


def test_timm_hook_on_an_earlier_block_keeps_the_shortcut() -> None:
    model: Any = MODEL_FACTORIES["timm-vit"]()
    seen: list[int] = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(1))
    try:
        with torch.no_grad():
            out = xvit.get_adapter(model).family.prefix_rows_logits(model, model_input(model))
    finally:
        handle.remove()
    assert out is not None and seen  # the earlier block runs as usual, hook included


def test_explain_moves_each_group_to_the_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=5)
    monkeypatch.setattr(xvit.api, "IMAGES_PER_CALL", 2)
    clean: list[int] = []
    explained: list[int] = []
    timed = xvit.api.timed_logits

    def spy_logits(adapter: Any, part: torch.Tensor) -> Any:
        clean.append(part.data_ptr())
        return timed(adapter, part)

    class Spy(xvit.Explainer):
        name = "spy-example"

        def compute(self, adapter: Any, inputs: torch.Tensor, target: torch.Tensor) -> Any:
            explained.append(inputs.data_ptr())
            gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
            return torch.ones(len(inputs), gh, gw)

    monkeypatch.setattr(xvit.api, "timed_logits", spy_logits)
    e = xvit.explain(Spy(), model, x, target=[0, 1, 0, 1, 0])
    assert len(clean) == 3 and clean == explained  # the same tensor for both: one copy
    assert e.targets.tolist() == [0, 1, 0, 1, 0] and len(e.class_names) == 5


def test_bench_explanation_time_holds_no_clean_forward() -> None:
    model = xvit.load_model("xvit:digits-vit")
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: forwards.append(len(args[0])))
    try:
        run_benchmark(
            model,
            get_dataset("digits"),
            methods="random",
            metrics="pointing_game",
            n=3,
            progress=False,
        )
    finally:
        handle.remove()
    # the benchmark's own clean forward of the batch; the random map makes no other
    assert forwards == [3]


def test_methods_that_keep_activations_take_images_a_pass_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=5)
    gae = xvit.get_method("gae")
    assert gae.images_per_pass is not None  # its memory must not grow with the images
    whole = xvit.explain("gae", model, x, target=[0, 1, 2, 3, 4]).map
    seen: list[int] = []
    compute = gae.compute

    def spy(self: Any, adapter: Any, inputs: torch.Tensor, target: Any) -> torch.Tensor:
        seen.append(len(inputs))
        return compute(self, adapter, inputs, target)

    monkeypatch.setattr(gae, "images_per_pass", 2)
    monkeypatch.setattr(gae, "compute", spy)
    parts = xvit.explain("gae", model, x, target=[0, 1, 2, 3, 4]).map
    assert seen == [2, 2, 1]
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)
