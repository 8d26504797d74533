"""Inputs in every accepted form, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xvit


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    files = {}
    files["rgb"] = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(files["rgb"])
    files["gray"] = tmp_path / "gray.png"
    Image.fromarray(rgb[..., 0]).save(files["gray"])
    files["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full((40, 50), 255, np.uint8)])).save(files["rgba"])
    files["16bit"] = tmp_path / "deep.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(files["16bit"])
    files["jpeg"] = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(files["jpeg"], quality=95)
    return files


def test_paths_pil_arrays_and_lists_agree(timm_vit, image_files) -> None:
    path = image_files["rgb"]
    pil = Image.open(path).convert("RGB")
    arr = np.asarray(pil)
    by_path = xvit.explain("gradmask", timm_vit, str(path), target=1)
    by_pil = xvit.explain("gradmask", timm_vit, pil, target=1)
    by_arr = xvit.explain("gradmask", timm_vit, arr, target=1)
    by_list = xvit.explain("gradmask", timm_vit, [path, pil], target=1)
    torch.testing.assert_close(by_path.map, by_pil.map)
    torch.testing.assert_close(by_path.map, by_arr.map)
    torch.testing.assert_close(by_list.map[0], by_path.map[0])
    assert by_list.map.shape == (2, 4, 4)
    assert by_path.images is not None and by_path.inputs is not None


def test_preprocessing_matches_a_plain_reference(timm_vit, image_files) -> None:
    adapter = xvit.get_adapter(timm_vit)
    prep = adapter.preprocessing
    img = Image.open(image_files["rgb"]).convert("RGB")
    # timm eval transform: shorter side to size / crop_pct, centre crop, normalise
    short = int(32 / prep.crop_pct)
    w, h = img.size
    resized = img.resize(
        (round(w * short / h), short) if w > h else (short, round(h * short / w)),
        resample=Image.Resampling.BICUBIC,
    )
    rw, rh = resized.size
    left, top = round((rw - 32) / 2), round((rh - 32) / 2)
    crop = np.asarray(resized.crop((left, top, left + 32, top + 32)), np.float32) / 255
    ref = (torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor(prep.mean)[:, None, None]) / (
        torch.tensor(prep.std)[:, None, None]
    )
    torch.testing.assert_close(prep(img), ref)


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit", "jpeg"])
def test_other_image_modes_are_converted(timm_vit, image_files, kind) -> None:
    e = xvit.explain("gradmask", timm_vit, image_files[kind])
    assert e.map.shape == (1, 4, 4) and torch.isfinite(e.map).all()


def test_bad_files(timm_vit, tmp_path: Path) -> None:
    with pytest.raises(xvit.InvalidInputError, match="not found"):
        xvit.explain("gradmask", timm_vit, tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(xvit.InvalidInputError, match="not an image"):
        xvit.explain("gradmask", timm_vit, text)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(xvit.InvalidInputError):
        xvit.explain("gradmask", timm_vit, truncated)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(3, 32, 32), "batch"),
        (torch.randn(2, 1, 32, 32), "channels"),
        (torch.randn(0, 3, 32, 32), "empty"),
        (torch.randn(1, 3, 40, 32), "32x32"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating"),
    ],
)
def test_bad_tensors(timm_vit, x, match) -> None:
    with pytest.raises(xvit.InvalidInputError, match=match):
        xvit.explain("gradmask", timm_vit, x)


@pytest.mark.parametrize(
    "target, match",
    [
        (5, "out of range"),
        (-1, "out of range"),
        (1.5, "int"),
        ([0, 1, 2], "3 targets"),
        (torch.tensor([0.0, 1.0]), "integer"),
    ],
)
def test_bad_targets(timm_vit, target, match) -> None:
    with pytest.raises(xvit.InvalidInputError, match=match):
        xvit.explain("gradmask", timm_vit, torch.randn(2, 3, 32, 32), target=target)


def test_targets_forms(timm_vit) -> None:
    x = torch.randn(2, 3, 32, 32)
    assert xvit.explain("gradmask", timm_vit, x, target=3).targets.tolist() == [3, 3]
    assert xvit.explain("gradmask", timm_vit, x, target=[1, 4]).targets.tolist() == [1, 4]
    pred = timm_vit(x).argmax(-1).tolist()
    assert xvit.explain("gradmask", timm_vit, x).targets.tolist() == pred


def test_unsupported_models() -> None:
    import timm

    for model in (
        timm.create_model("resnet18", pretrained=False, num_classes=3),
        timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3),
        torch.nn.Linear(3, 3),
        lambda x: x,
    ):
        with pytest.raises(xvit.UnsupportedModelError, match="supports"):
            xvit.explain("gradmask", model, torch.randn(1, 3, 32, 32))


def test_modified_structure_is_detected(timm_vit) -> None:
    class NoQKV(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    timm_vit.blocks[1].attn = NoQKV(timm_vit.blocks[1].attn)
    with pytest.raises(xvit.UnsupportedModelError, match="block 1"):
        xvit.explain("gradmask", timm_vit, torch.randn(1, 3, 32, 32))


def test_hooks_that_capture_nothing_are_reported(timm_vit) -> None:
    # a block whose forward bypasses its attention: the capture must notice, not return zeros
    block = timm_vit.blocks[2]
    block.forward = lambda x, *a, **k: x + block.mlp(block.norm2(x))
    with pytest.raises(xvit.CaptureError, match="block 2"):
        xvit.explain("gradmask", timm_vit, torch.randn(1, 3, 32, 32))
    del block.forward
