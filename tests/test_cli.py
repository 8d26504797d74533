"""The command line: list, explain, exit codes and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import xvit
from conftest import MODEL_FACTORIES
from xvit.cli import main


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model = MODEL_FACTORIES["timm-vit"]()
    path = tmp_path / "tiny.safetensors"
    kwargs = dict(num_classes=5, embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8)
    xvit.save_checkpoint(
        model,
        path,
        timm_name="vit_tiny_patch16_224",
        model_kwargs=kwargs,
        preprocessing=xvit.Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    Image.fromarray((np.random.default_rng(1).random((48, 40, 3)) * 255).astype(np.uint8)).save(
        path
    )
    return path


def test_checkpoint_round_trip(checkpoint: Path) -> None:
    import torch

    original = MODEL_FACTORIES["timm-vit"]()
    loaded = xvit.load_model(str(checkpoint))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), original(x))
    assert xvit.get_adapter(loaded).preprocessing.mean == (0.5, 0.5, 0.5)


def test_list_shows_methods_and_papers() -> None:
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    for name in xvit.list_methods():
        assert name in result.output
        assert xvit.get_method(name).paper.split(",")[0] in result.output


def test_explain_writes_overlays(checkpoint: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(image),
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            "--target",
            "2",
            "-p",
            "masks_per_layer=2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "class 2" in result.output
    png = out / "cat_gradmask.png"
    assert png.exists()
    with Image.open(png) as img:
        assert img.size[0] > 200


@pytest.mark.parametrize(
    "args",
    [
        ["explain", "missing.png"],
        ["explain", "{image}", "--model", "no-such-model"],
        ["explain", "{image}", "--model", "{ckpt}", "--method", "nope"],
        ["explain", "{image}", "--model", "{ckpt}", "--target", "99"],
        ["explain", "{image}", "--model", "{ckpt}", "-p", "masks_per_layer=3"],
        ["explain", "{image}", "--model", "{ckpt}", "-p", "bogus=1"],
        ["explain", "{image}", "--model", "{ckpt}", "--device", "cuda:7"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, image: Path, checkpoint: Path) -> None:
    argv = [a.format(image=image, ckpt=checkpoint) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def test_crash_inside_method_is_short_unless_debug(image: Path, checkpoint: Path, monkeypatch):
    from xvit.methods.gradmask import GradMask

    def boom(*_a, **_k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(GradMask, "attribute", boom)
    result = CliRunner().invoke(main, ["explain", str(image), "--model", str(checkpoint)])
    assert result.exit_code == 1
    assert "kaboom" in result.stderr and "Traceback" not in result.stderr
    result = CliRunner().invoke(
        main, ["--debug", "explain", str(image), "--model", str(checkpoint)]
    )
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_method_specific_params(checkpoint: Path, image: Path, tmp_path: Path, monkeypatch) -> None:
    seen: dict[str, dict] = {}
    real = xvit.api.explain

    def spy(method, model, inputs, target=None, progress=None, **params):
        seen[method] = params
        return real(method, model, inputs, target=target, progress=progress, **params)

    monkeypatch.setattr(xvit, "explain", spy)
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(image),
            "--model",
            str(checkpoint),
            "--out",
            str(tmp_path / "o"),
            "--methods",
            "gradmask,rise",
            "-p",
            "rise.num_masks=8",
            "-p",
            "batch_size=16",
            "-p",
            "gradmask.masks_per_layer=2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["rise"] == {"num_masks": 8, "batch_size": 16}
    assert seen["gradmask"] == {"masks_per_layer": 2, "batch_size": 16}
    assert (tmp_path / "o" / "comparison.png").exists()
    bad = CliRunner().invoke(
        main, ["explain", str(image), "--model", str(checkpoint), "-p", "vitcx.noise_std=0.2"]
    )
    assert bad.exit_code == 2 and "vitcx" in bad.stderr


def test_explain_estimate_and_progress(
    checkpoint: Path, image: Path, tmp_path: Path, monkeypatch
) -> None:
    real = xvit.api.timed_logits  # the measured speed, fixed at 0.1 s per forward
    monkeypatch.setattr(xvit.api, "timed_logits", lambda a, x: (real(a, x)[0], 0.1))
    base = ["explain", str(image), str(image), "--model", str(checkpoint), "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*base, "-m", "rise", "-p", "num_masks=100"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "xvit: rise on 2 images: 200 forwards, about 20 s on cpu"
    assert lines[-1].startswith("xvit rise: 2/2 images (100%)")
    assert "\r" not in result.stderr and "images (" not in result.stdout  # all on stderr
    result = CliRunner().invoke(main, [*base, "-m", "attention"])
    assert result.exit_code == 0 and result.stderr == ""
    result = CliRunner().invoke(main, [*base, "-m", "attention", "--progress"])
    assert result.stderr.splitlines()[-1].startswith("xvit attention: 2/2 images (100%)")
    result = CliRunner().invoke(main, [*base, "-m", "rise", "-p", "num_masks=100", "--no-progress"])
    assert result.exit_code == 0 and result.stderr == ""
