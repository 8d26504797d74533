"""The optimised scoring kernel gives the plain path's numbers, with fewer forwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import xvit
import xvit.methods.gradmask as gradmask_module
from conftest import MODEL_FACTORIES, model_input
from xvit.methods._scoring import score_binary_masks, score_masks


class CountingAdapter:
    """Wraps an adapter and counts the images its forward sees."""

    def __init__(self, adapter: xvit.ModelAdapter) -> None:
        self.inner = adapter
        self.batches: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        return self.inner.forward_logits(x)

    def scoring_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        return self.inner.scoring_logits(x)

    def logits(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        forward = kwargs.pop("forward", None) or self.forward_logits
        return forward(x)


def _binary_masks_with_repeats(b: int, k: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(b, k, h, w, generator=g) > 0.5).float()
    masks[:, 1] = masks[:, 0]  # duplicates within an image
    masks[:, 2] = 1.0  # the unmasked image
    masks[:, 5] = 1.0
    masks[1, 3] = masks[0, 3]  # same mask on another image is NOT a duplicate
    return masks


@pytest.mark.parametrize("model_name", ["timm-vit", "hf-deit-teacher"])
def test_deduplicated_scores_equal_plain_scores(model_name: str, monkeypatch) -> None:
    # forwards counted whole: without the patch-token path's capture pass (tests of that
    # path: test_patch_tokens.py)
    monkeypatch.setattr("xvit.methods._scoring.patch_token_parts", lambda adapter: None)
    model = MODEL_FACTORIES[model_name]()
    adapter = CountingAdapter(xvit.get_adapter(model))
    x = model_input(model, batch=2)
    t = torch.tensor([1, 3])
    gh, gw = adapter.geometry.grid()
    masks = _binary_masks_with_repeats(2, 8, gh, gw)
    plain = score_masks(adapter, x, t, masks, batch_size=5)  # type: ignore[arg-type]
    plain_forwards = sum(adapter.batches)
    adapter.batches.clear()
    with torch.no_grad():
        base = model(x) if model_name.startswith("timm") else model(pixel_values=x).logits
    base_probs = base.softmax(-1).gather(1, t[:, None]).squeeze(1)
    fast = score_binary_masks(adapter, x, t, masks, base_probs=base_probs, batch_size=5)  # type: ignore[arg-type]
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-7)
    assert plain_forwards == 16
    # per image: 8 masks, one duplicate, two all-ones (reused) -> 5 forwards each
    assert sum(adapter.batches) == 10


def _gradient_pass_sizes(model: torch.nn.Module, x: torch.Tensor, **params: Any) -> list[int]:
    """Images in each gradient pass of a GradMask call, and its maps."""
    sizes: list[int] = []
    handle = model.blocks[0].attn.qkv.register_forward_hook(
        lambda m, i, o: sizes.append(int(o.shape[0])) if torch.is_grad_enabled() else None
    )
    try:
        xvit.explain("gradmask", model, x, **params)
    finally:
        handle.remove()
    return sizes


def test_gradmask_gradient_pass_is_chunked(timm_vit: torch.nn.Module, monkeypatch) -> None:
    monkeypatch.setattr(gradmask_module, "GRADIENT_ROWS", 1)  # the share rule alone
    x = model_input(timm_vit, batch=9)
    sizes = _gradient_pass_sizes(timm_vit, x, batch_size=32)  # 2 images per pass
    assert sizes == [2, 2, 2, 2, 1]
    chunked = xvit.explain("gradmask", timm_vit, x, batch_size=32)
    whole = xvit.explain("gradmask", timm_vit, x, batch_size=4096)
    torch.testing.assert_close(chunked.map, whole.map, rtol=1e-5, atol=1e-6)


def test_gradmask_gradient_pass_takes_enough_token_rows(timm_vit, monkeypatch) -> None:
    # 17 tokens (16 patches + CLS): 100 rows are 6 images, more than 64 // 16 = 4, and never
    # more images than batch_size
    monkeypatch.setattr(gradmask_module, "GRADIENT_ROWS", 100)
    x = model_input(timm_vit, batch=13)
    assert xvit.get_adapter(timm_vit).geometry.num_tokens() == 17
    assert _gradient_pass_sizes(timm_vit, x, batch_size=64) == [6, 6, 1]
    assert _gradient_pass_sizes(timm_vit, x, batch_size=4) == [4, 4, 4, 1]
    assert _gradient_pass_sizes(timm_vit, x, batch_size=256) == [13]  # 256 // 16 = 16


def _largest_batches(model: torch.nn.Module, n: int, batch_size: int) -> tuple[int, int]:
    """Most images in one gradient pass and in one masked forward of a GradMask job."""
    grad_sizes: list[int] = []
    forward_sizes: list[int] = []

    def record(_m, _i, out: torch.Tensor) -> None:
        (grad_sizes if torch.is_grad_enabled() else forward_sizes).append(int(out.shape[0]))

    handle = model.blocks[0].attn.qkv.register_forward_hook(record)
    try:
        xvit.explain("gradmask", model, model_input(model, batch=n), batch_size=batch_size)
    finally:
        handle.remove()
    return max(grad_sizes), max(forward_sizes)


def test_gradmask_working_set_does_not_grow_with_the_number_of_images(
    timm_vit, monkeypatch
) -> None:
    # what a job holds at once is set by batch_size (and the token rows of a gradient pass)
    # alone: a 10-image and a 40-image job run gradient passes and masked forwards of the
    # same sizes
    monkeypatch.setattr(gradmask_module, "GRADIENT_ROWS", 4 * 17)  # 4 images of 17 tokens
    small = _largest_batches(timm_vit, 10, batch_size=64)
    large = _largest_batches(timm_vit, 40, batch_size=64)
    assert small == large == (4, 64)


@pytest.mark.parametrize("method", ["gradmask", "rise", "random", "rollout"])
def test_explain_hands_methods_bounded_groups_of_images(monkeypatch, timm_vit, method) -> None:
    x = model_input(timm_vit, batch=7)
    params = {"num_masks": 40} if method == "rise" else {}
    whole = xvit.explain(method, timm_vit, x, **params).map
    seen: list[int] = []
    explainer = xvit.make_explainer(method, **params)
    attribute = explainer.attribute

    def spy(adapter, inputs, target):
        seen.append(int(inputs.shape[0]))
        return attribute(adapter, inputs, target)

    monkeypatch.setattr(explainer, "attribute", spy)
    monkeypatch.setattr(xvit.api, "IMAGES_PER_CALL", 3)
    grouped = xvit.explain(explainer, timm_vit, x).map
    assert seen == [3, 3, 1]
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["gradmask", "rise", "vitcx"])
def test_bf16_maps_track_fp32(method: str) -> None:
    from scipy.stats import spearmanr

    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=2)
    params = dict(xvit.get_method(method).quick_params)
    if xvit.get_method(method).randomized:
        params["seed"] = 0
    fp32 = xvit.explain(method, model, x, target=1, **params).map
    bf16 = xvit.explain(method, model, x, target=1, precision="bf16", **params).map
    assert not torch.equal(fp32, bf16)  # autocast really ran
    rel = ((fp32 - bf16).abs().max() / fp32.abs().max()).item()
    rho = spearmanr(fp32.flatten().numpy(), bf16.flatten().numpy()).statistic
    assert rel < 0.05 and rho > 0.9, (rel, rho)


@pytest.mark.parametrize("method", ["gradmask", "rise", "vitcx"])
def test_precision_is_validated(method: str, timm_vit) -> None:
    with pytest.raises(xvit.ParameterError, match="precision"):
        xvit.explain(method, timm_vit, model_input(timm_vit), precision="fp16")


@pytest.mark.slow
def test_compiled_scoring_matches_eager(timm_vit: torch.nn.Module) -> None:
    x = model_input(timm_vit, batch=3)
    eager = xvit.explain("gradmask", timm_vit, x, batch_size=32)
    compiled = xvit.explain("gradmask", timm_vit, x, batch_size=32, compile=True)
    torch.testing.assert_close(compiled.map, eager.map, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
def test_scoring_forward_equals_the_model_forward(model_name: str) -> None:
    """The masked-scoring forward (with its last-block shortcut where the adapter has one)
    gives the model's own logits, in eval and for every token layout."""
    model = MODEL_FACTORIES[model_name]()
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(
            adapter.scoring_logits(x), adapter.forward_logits(x), rtol=1e-5, atol=1e-6
        )


def test_last_block_shortcut_skips_patch_rows(
    timm_vit: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    # spy on the MLP class, not with a hook: a hook on the last block makes the shortcut
    # step aside (tests/test_speed_guards.py)
    seen: list[int] = []
    mlp_class = type(timm_vit.blocks[-1].mlp)
    original = mlp_class.forward

    def spy(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self is timm_vit.blocks[-1].mlp:
            seen.append(int(x.shape[1]))
        return original(self, x)

    monkeypatch.setattr(mlp_class, "forward", spy)
    with torch.no_grad():
        xvit.get_adapter(timm_vit).scoring_logits(model_input(timm_vit))
    assert seen == [timm_vit.num_prefix_tokens]
