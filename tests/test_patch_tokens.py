"""Patch-masked copies scored from patch tokens (xvit.models._patch_tokens, issue 18).

The oracle is the pixel path of the same kernel: the same masks applied by a perturbation
the kernel does not recognise (so it multiplies the pixels and runs the plain forward).
The same numbers go through the same operations, so the tokens entering the blocks are
equal exactly; the logits may still differ in the last bit where a BLAS kernel's summation
order depends on the memory alignment of its operands (MKL does so), hence ``close``:
1e-7 absolute on probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest.mock import patch

import pytest
import torch
from family_models import FAMILY_FACTORIES
from test_gradmask import spread_weights
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.methods._scoring import fill_perturb, score_masks
from xvit.models._patch_tokens import (
    PatchTokens,
    _patch_layout,
    patch_token_parts,
    reads_each_patch_alone,
)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def pixel_perturb(fill: float) -> object:
    """The fill perturbation, as a plain function the kernel takes the pixel path for."""

    def perturb(x: torch.Tensor, m: torch.Tensor, _index: torch.Tensor) -> torch.Tensor:
        return x * m + fill * (1 - m)

    return perturb


@contextmanager
def counting_token_copies() -> Iterator[list[int]]:
    """How many chunks went through the patch-token path in the block."""
    seen = [0]
    original = PatchTokens.copies

    def copies(self: PatchTokens, owner: torch.Tensor, keep: torch.Tensor):  # type: ignore[no-untyped-def]
        seen[0] += 1
        return original(self, owner, keep)

    with patch.object(PatchTokens, "copies", copies):
        yield seen


def grid_masks(model: nn.Module, count: int, seed: int = 0) -> torch.Tensor:
    geo = xvit.get_adapter(model).geometry
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(count, *geo.grid(), generator=g) > 0.5).float()


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
@pytest.mark.parametrize("fill", [0.0, 0.7])
def test_token_path_equals_the_pixel_path(name: str, fill: float) -> None:
    model = MODEL_FACTORIES[name]()
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=3)
    target = torch.tensor([0, 1, 2])
    masks = grid_masks(model, 12)
    masks[0] = 1.0  # the whole image and nothing of it are copies too
    masks[1] = 0.0
    with counting_token_copies() as used:
        fast = score_masks(adapter, x, target, masks, perturb=fill_perturb(fill), batch_size=8)
    slow = score_masks(adapter, x, target, masks, perturb=pixel_perturb(fill), batch_size=8)
    assert used[0] == 5  # 36 copies in chunks of 8, every one by tokens
    close(fast, slow)


def test_blocks_after_the_first_see_the_same_tokens(timm_vit: nn.Module) -> None:
    # a user's hook on a later block still runs, and sees what the pixel copies give it
    adapter = xvit.get_adapter(timm_vit)
    x, target, masks = model_input(timm_vit, batch=2), torch.tensor([0, 1]), grid_masks(timm_vit, 8)
    seen: list[torch.Tensor] = []
    handle = timm_vit.blocks[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with counting_token_copies() as used:
            score_masks(adapter, x, target, masks, batch_size=16)
        fast = torch.cat(seen)
        seen.clear()
        score_masks(adapter, x, target, masks, perturb=pixel_perturb(0.0), batch_size=16)
    finally:
        handle.remove()
    assert used[0] == 1
    assert torch.equal(fast, torch.cat(seen))


def test_gradmask_maps_are_unchanged(timm_vit: nn.Module) -> None:
    x = model_input(timm_vit, batch=3)
    with counting_token_copies() as used:
        fast = xvit.explain("gradmask", timm_vit, x).map
    with patch("xvit.methods._scoring.patch_token_parts", lambda adapter: None):
        slow = xvit.explain("gradmask", timm_vit, x).map
    assert used[0] > 0
    close(fast, slow)


def test_bf16_token_path_is_close_to_the_pixel_path(timm_vit: nn.Module) -> None:
    adapter = xvit.get_adapter(timm_vit)
    x, target, masks = model_input(timm_vit, batch=2), torch.tensor([0, 1]), grid_masks(timm_vit, 8)
    kw = {"batch_size": 16, "precision": "bf16"}
    with counting_token_copies() as used:
        fast = score_masks(adapter, x, target, masks, **kw)
    slow = score_masks(adapter, x, target, masks, perturb=pixel_perturb(0.0), **kw)
    assert used[0] == 1
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)


def cases_for_the_pixel_path(model: nn.Module) -> dict[str, dict]:
    geo = xvit.get_adapter(model).geometry
    gh, gw = geo.grid()
    soft = torch.rand(8, gh, gw, generator=torch.Generator().manual_seed(3))
    finer = torch.rand(8, 2 * gh, 2 * gw, generator=torch.Generator().manual_seed(3)) > 0.5
    return {
        "soft masks": {"masks": soft},
        "masks finer than the grid": {"masks": finer.float()},
        "another perturbation": {"perturb": pixel_perturb(0.0)},
        "bilinear upsampling": {"upsample": "bilinear"},
    }


@pytest.mark.parametrize(
    "case",
    [
        "soft masks",
        "masks finer than the grid",
        "another perturbation",
        "bilinear upsampling",
    ],
)
def test_pixel_path_where_tokens_would_not_be_exact(case: str, timm_vit: nn.Module) -> None:
    adapter = xvit.get_adapter(timm_vit)
    kw = {"masks": grid_masks(timm_vit, 8), **cases_for_the_pixel_path(timm_vit)[case]}
    with counting_token_copies() as used:
        score_masks(adapter, model_input(timm_vit), torch.tensor([0, 1]), batch_size=16, **kw)
    assert used[0] == 0


@pytest.mark.parametrize("where", ["patch embedding", "first norm", "first projections"])
def test_a_users_hook_keeps_the_pixel_path(where: str, timm_vit: nn.Module) -> None:
    module = {
        "patch embedding": timm_vit.patch_embed,
        "first norm": timm_vit.blocks[0].norm1,
        "first projections": timm_vit.blocks[0].attn.qkv,
    }[where]
    calls: list[int] = []
    handle = module.register_forward_hook(lambda _m, args, out: calls.append(len(out)))
    try:
        adapter = xvit.get_adapter(timm_vit)
        with counting_token_copies() as used:
            score_masks(
                adapter, model_input(timm_vit), torch.tensor([0, 1]), grid_masks(timm_vit, 8)
            )
    finally:
        handle.remove()
    assert used[0] == 0 and sum(calls) == 16  # the hook saw every copy


def test_training_mode_keeps_the_pixel_path(timm_vit: nn.Module) -> None:
    timm_vit.train()
    assert patch_token_parts(xvit.get_adapter(timm_vit)) is None


def test_model_is_left_as_it_was_also_after_an_error(timm_vit: nn.Module) -> None:
    adapter = xvit.get_adapter(timm_vit)
    x, target, masks = model_input(timm_vit), torch.tensor([0, 1]), grid_masks(timm_vit, 8)
    before = snapshot(timm_vit)
    score_masks(adapter, x, target, masks)
    assert snapshot(timm_vit) == before

    def fail(_module: nn.Module, _args: object) -> None:
        raise RuntimeError("a later block fails")

    handle = timm_vit.blocks[1].register_forward_pre_hook(fail)
    try:
        with pytest.raises(xvit.ModelOutputError, match="a later block fails"):
            score_masks(adapter, x, target, masks)
    finally:
        handle.remove()
    assert snapshot(timm_vit) == before


def test_only_non_overlapping_patch_embeddings_qualify() -> None:
    assert reads_each_patch_alone(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.LayerNorm(8)))
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 4, stride=4))
    assert not reads_each_patch_alone(stem)  # a stem mixes neighbouring patches
    assert not reads_each_patch_alone(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU()))
    assert not reads_each_patch_alone(nn.Conv2d(3, 8, 4, stride=4, padding=1))


def test_families_that_declare_it(any_model: nn.Module) -> None:
    adapter = xvit.get_adapter(any_model)
    assert "patch_tokens" in adapter.capabilities
    parts = patch_token_parts(adapter)
    assert parts is not None and parts.qkv  # pre-norm: block 0's projections too


def open_clip_zero_shot() -> nn.Module:
    """test_open_clip's tiny CLIP as a zero-shot classifier (skipped without open_clip)."""
    pytest.importorskip("open_clip", reason="open_clip is not installed (optional)")
    from test_open_clip import text_features, tiny_clip  # its module skips without open_clip

    model = tiny_clip()
    return xvit.zero_shot(model, text_features=text_features(model))


#: The families beyond timm ViT and HF ViT/DeiT: patch embedding only (no pre-norm parts).
OTHER_FAMILIES = {**FAMILY_FACTORIES, "open-clip-zero-shot": open_clip_zero_shot}


@pytest.mark.parametrize("name", sorted(OTHER_FAMILIES))
def test_other_families_score_copies_from_patch_tokens(name: str) -> None:
    # spread weights: fresh timm BEiT (layer scale 1e-5) scores every copy alike
    model = spread_weights(OTHER_FAMILIES[name]())
    adapter = xvit.get_adapter(model)
    assert "patch_tokens" in adapter.capabilities
    x, target = model_input(model, batch=3), torch.tensor([0, 1, 2])
    masks = grid_masks(model, 12)
    masks[0], masks[1] = 1.0, 0.0
    with counting_token_copies() as used:
        fast = score_masks(adapter, x, target, masks, perturb=fill_perturb(0.7), batch_size=8)
    slow = score_masks(adapter, x, target, masks, perturb=pixel_perturb(0.7), batch_size=8)
    assert used[0] == 5  # 36 copies in chunks of 8, every one by tokens
    assert (slow.amax(dim=1) - slow.amin(dim=1)).min() > 1e-5  # the masks matter, well over atol
    close(fast, slow)


def test_a_conv_stem_keeps_the_pixel_path() -> None:
    from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

    torch.manual_seed(0)
    stem = [ConvStemConfig(out_channels=8, kernel_size=3, stride=2) for _ in range(3)]
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=3,
        conv_stem_configs=stem,
    ).eval()
    adapter = xvit.get_adapter(model)
    assert "patch_tokens" in adapter.capabilities  # declared by the family, refused per model
    assert patch_token_parts(adapter) is None
    x, target, masks = model_input(model), torch.tensor([0, 1]), grid_masks(model, 8)
    with counting_token_copies() as used:
        score_masks(adapter, x, target, masks)
    assert used[0] == 0


def test_a_fill_image_takes_the_token_path_too(timm_vit: nn.Module) -> None:
    adapter = xvit.get_adapter(timm_vit)
    x, target, masks = model_input(timm_vit), torch.tensor([0, 1]), grid_masks(timm_vit, 8)
    fill = torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(4))

    def pixels(x: torch.Tensor, m: torch.Tensor, _index: torch.Tensor) -> torch.Tensor:
        return x * m + fill * (1 - m)

    with counting_token_copies() as used:
        fast = score_masks(adapter, x, target, masks, perturb=fill_perturb(fill))
    assert used[0] == 1
    close(fast, score_masks(adapter, x, target, masks, perturb=pixels))


def test_patch_layout_is_read_with_the_token_width() -> None:
    # a width equal to the grid height no longer passes for a grid dimension
    assert _patch_layout(torch.Size([2, 8, 4, 6]), (4, 6), 8) == "nchw"
    assert _patch_layout(torch.Size([2, 4, 6, 8]), (4, 6), 8) == "nhwc"
    assert _patch_layout(torch.Size([2, 24, 8]), (4, 6), 8) == "tokens"
    assert _patch_layout(torch.Size([2, 4, 6, 4]), (4, 6), 8) is None
