"""``xvit demo`` and ``scripts/make_gallery.py`` draw one gallery (with per-cell AUCs) through
the same function, and the demo lists every file it writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

import xvit
from xvit import demo
from xvit.cli import main
from xvit.data import get_dataset
from xvit.metrics import Insertion

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ("random",)  # the cheapest method


@pytest.fixture(scope="module")
def model():
    return xvit.load_model("xvit:digits-vit")


@pytest.fixture
def drawn(monkeypatch) -> list[list[str]]:
    """Record the methods of every gallery drawn; run the demo with cheap methods only."""
    calls: list[list[str]] = []
    real = demo.gallery_figure

    def spy(model, samples, methods, **kw):
        calls.append([m.name for m in methods])
        return real(model, samples, methods, **kw)

    cheap = [m for m in demo.demo_methods() if m.name in CHEAP]
    monkeypatch.setattr(demo, "gallery_figure", spy)
    monkeypatch.setattr(demo, "demo_methods", lambda: cheap)
    return calls


def test_gallery_cells_carry_insertion_and_deletion_aucs(model) -> None:
    samples = list(get_dataset("digits", split="test", n=1))
    methods = [m for m in demo.demo_methods() if m.name == "attention"]
    fig = demo.gallery_figure(model, samples, methods, model_name="xvit:digits-vit")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith(f"input\nclass {samples[0].label}, p=")
    assert "xvit:digits-vit on held-out digits" in fig.texts[0].get_text()
    said = "target class, insertion (higher is better) and deletion (lower is better) AUC per cell"
    assert fig.texts[0].get_text().endswith(said)  # from the metrics' declared metadata
    width = xvit.get_adapter(model).preprocessing.size[1]
    steps = dict(step=demo.DEMO_ROWS_PER_STEP * width)
    for row, sample in enumerate(samples):
        e = xvit.explain("attention", model, [sample.image], target=sample.label)
        ins = Insertion(**steps)(model, e.inputs, e.targets, e).scores[0]
        cell = titles[row * (1 + len(methods)) + 1]
        assert cell.startswith(f"attention\nins {ins:.2f}  del "), cell


def test_demo_and_the_readme_script_draw_the_same_gallery(drawn, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--n", "1", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert drawn == [list(CHEAP)]
    assert "times: " in result.output and (tmp_path / "demo" / "times.png").is_file()
    for name in ("gallery.png", "table.md", "curves.png"):
        assert str(tmp_path / "demo" / name) in result.output
    for name in ("table.md", "mprt.png"):  # the MPRT sanity check, on a few digits
        assert str(tmp_path / "demo" / "mprt" / name) in result.output

    spec = importlib.util.spec_from_file_location("make_gallery", ROOT / "scripts/make_gallery.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "readme.png"
    script.main(["--n", "1", "--methods", ",".join(CHEAP), "--out", str(out)])
    assert drawn == [list(CHEAP), list(CHEAP)]
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_export_samples_writes_held_out_canvases_the_model_reads(tmp_path, monkeypatch) -> None:
    def no_demo(*args, **kwargs):
        raise AssertionError("--export-samples ran the demo")

    monkeypatch.setattr(xvit.models, "load_model", no_demo)
    out = tmp_path / "digits"
    result = CliRunner().invoke(main, ["demo", "--export-samples", str(out), "--n", "30"])
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    assert "xvit explain" in result.output
    paths = sorted(out.glob("*.png"))
    assert [p.name for p in paths[:2]] == ["digit-0000-label9.png", "digit-0001-label4.png"]
    data = get_dataset("digits", split="test", n=30)
    images = [xvit.load_image(p) for p in paths]
    labels = [int(p.stem.rsplit("label", 1)[1]) for p in paths]
    assert labels == [s.label for s in data]
    assert all(im.tobytes() == s.image.tobytes() for im, s in zip(images, data))  # lossless
    e = xvit.explain("attention", xvit.load_model("xvit:digits-vit"), images)
    accuracy = sum(int(t) == label for t, label in zip(e.targets, labels)) / len(labels)
    assert accuracy >= 0.9  # 0.97 on the 2000 held-out canvases of train_digits.py


def test_what_the_shipped_model_knows_is_in_readme_and_explain_help() -> None:
    from xvit.data.digits import TRAINED_ON

    def words(text: str) -> str:
        return " ".join(text.split())

    help_text = CliRunner().invoke(main, ["explain", "--help"]).output
    assert words(TRAINED_ON) in words(help_text)
    assert words(TRAINED_ON) in words((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "--export-samples" in help_text
