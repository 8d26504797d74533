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


@pytest.fixture
def spies(monkeypatch) -> dict[str, list]:
    """Record model loads and explain calls (method name and parameters) of the CLI."""
    seen: dict[str, list] = {"loads": [], "explained": []}
    load, explain = xvit.load_model, xvit.explain

    def load_spy(*args, **kwargs):
        seen["loads"].append(args)
        return load(*args, **kwargs)

    def explain_spy(method, model, inputs, target=None, progress=None, **params):
        built = xvit.make_explainer(method, **params)
        seen["explained"].append((built.name, built.params()))
        return explain(built, model, inputs, target=target, progress=progress)

    monkeypatch.setattr(xvit, "load_model", load_spy)
    monkeypatch.setattr(xvit, "explain", explain_spy)
    return seen


def run_explain(image: Path, checkpoint: Path, out: Path, *args: str):
    return CliRunner().invoke(
        main, ["explain", str(image), "--model", str(checkpoint), "--out", str(out), *args]
    )


def test_method_specific_params(checkpoint: Path, image: Path, tmp_path: Path, spies) -> None:
    args = ["--methods", "gradmask,rise", "-p", "rise.num_masks=8", "-p", "batch_size=16"]
    result = run_explain(image, checkpoint, tmp_path / "o", *args, "-p", "masks_per_layer=2")
    assert result.exit_code == 0, result.output
    params = dict(spies["explained"])
    assert params["rise"]["num_masks"] == 8 and params["rise"]["batch_size"] == 16
    assert params["gradmask"]["masks_per_layer"] == 2 and params["gradmask"]["batch_size"] == 16
    assert (tmp_path / "o" / "comparison.png").exists()


def test_a_setting_for_its_method_overrides_a_bare_one_in_any_order() -> None:
    from xvit._cli_support import Selection, build

    items = ["rise.num_masks=8", "num_masks=50", "seed=3", "seed=4"]
    (built,) = build([Selection(xvit.method_registry, "rise,vitcx,random", "--methods")], items)
    assert [(e.name, getattr(e, "num_masks", None), e.seed) for e in built] == [
        ("rise", 8, 4),
        ("vitcx", None, 4),
        ("random", None, 4),
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-m", "gradmask,foo"], "unknown method 'foo'"),
        (["-m", "gradmask,rolout"], "Did you mean 'rollout'?"),
        (["-m", "gradmask,rise", "-p", "rise.num_masks=0"], "num_masks must be"),
        (["-m", "gradmask,rise", "-p", "rise.num_mask=8"], "Did you mean 'num_masks'?"),
        (["-m", "gradmask,rollout", "-p", "tolerance=3"], "has a parameter 'tolerance'"),
        (["-m", "gradmask", "-p", "rise.num_masks=8"], "add it: --methods gradmask,rise"),
        (["-m", "gradmask", "-p", "gradmsk.fill=0.5"], "Did you mean 'gradmask'"),
        (["-m", "gradmask", "-p", "pointing_game.tolerance=3"], "is a metric"),
        (["-m", "gradmask", "-p", "fill"], "is not KEY=VALUE"),
    ],
)
def test_names_and_parameters_are_checked_before_the_model_loads(
    args, says, checkpoint: Path, image: Path, tmp_path: Path, spies
) -> None:
    result = run_explain(image, checkpoint, tmp_path / "o", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], result.stderr
    assert spies["loads"] == [] and spies["explained"] == []
    assert result.stdout == ""


def test_a_bare_parameter_goes_to_the_methods_that_have_it(
    checkpoint: Path, image: Path, tmp_path: Path, spies
) -> None:
    args = ["-m", "gradmask,rollout,rise", "-p", "num_masks=8", "-p", "masks_per_layer=1"]
    result = run_explain(image, checkpoint, tmp_path / "o", *args)
    assert result.exit_code == 0, result.output
    params = dict(spies["explained"])
    assert params["rise"]["num_masks"] == 8 and params["gradmask"]["masks_per_layer"] == 1
    assert params["rollout"] == xvit.get_method("rollout").defaults()


def test_images_with_one_file_name_get_distinct_overlays(checkpoint: Path, tmp_path: Path) -> None:
    for folder, shade in (("d1", 0), ("d2", 255)):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (40, 40), (shade,) * 3).save(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    images = [str(tmp_path / "d1" / "x.png"), str(tmp_path / "d2" / "x.png")]
    result = CliRunner().invoke(
        main, ["explain", *images, "--model", str(checkpoint), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    written = {"d1": out / "d1_x_gradmask.png", "d2": out / "d2_x_gradmask.png"}
    assert sorted(out.iterdir()) == sorted(written.values())
    for image, line in zip(images, result.stdout.splitlines()):
        folder = Path(image).parent.name
        assert line.startswith(f"{image}:") and line.endswith(f"-> {written[folder]}")
    brightness = {}
    for folder, path in written.items():
        with Image.open(path) as png:
            brightness[folder] = np.asarray(png.convert("L"), dtype=float).mean()
    assert brightness["d1"] < brightness["d2"]  # each file shows its own (black / white) input


def test_comparison_grid_rows_are_labelled_with_file_names(
    checkpoint: Path, image: Path, tmp_path: Path, monkeypatch
) -> None:
    import xvit.viz

    labels = []
    real = xvit.viz.compare

    def spy(*args, **kwargs):
        labels.append(kwargs.get("row_labels"))
        return real(*args, **kwargs)

    monkeypatch.setattr(xvit.viz, "compare", spy)
    (tmp_path / "d").mkdir()
    other = tmp_path / "d" / image.name
    other.write_bytes(image.read_bytes())
    args = ["explain", str(image), str(other), "--model", str(checkpoint), "-m", "random,gae"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert labels == [[str(image), str(other)]]  # one file name twice: the paths as given
    single = CliRunner().invoke(main, [*args[:2], *args[3:], "--out", str(tmp_path / "o")])
    assert single.exit_code == 0, single.output
    assert labels[1] == [image.name]


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
