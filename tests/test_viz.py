"""Pictures: overlays against the alpha-blending definition, maps placed where the model looked,
comparison grids, curves with their confidence bands, time charts, and the commands that
write them (``xvit explain --methods``, ``xvit bench``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from matplotlib import colormaps
from PIL import Image
from scipy import stats

import xvit
from conftest import MODEL_FACTORIES, model_input
from xvit.bench._report import summarize
from xvit.bench.runner import run_benchmark
from xvit.cli import main
from xvit.models import Preprocessing
from xvit.viz import (
    compare,
    overlay,
    overlay_array,
    plot_curves,
    plot_times,
    save_overlays,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _explained(name: str = "timm-vit-rect", method: str = "attention", batch: int = 2):
    model = MODEL_FACTORIES[name]()
    x = model_input(model, batch=batch)
    return model, x, xvit.explain(method, model, x)


def _reference_blend(pixels: np.ndarray, saliency: torch.Tensor, alpha: float, cmap: str):
    """Alpha blending by its definition: (1 - alpha) * image + alpha * colour(saliency)."""
    colours = colormaps[cmap](saliency.numpy())[..., :3]
    return (1 - alpha) * pixels + alpha * colours


def _scaled_and_upsampled(map_: torch.Tensor, size: tuple[int, int], grid: bool) -> torch.Tensor:
    """The map min-max scaled to [0, 1], then brought to ``size`` by torch's own resampling
    (nearest, or bilinear with half-pixel centres)."""
    m = map_.double()
    m = ((m - m.min()) / (m.max() - m.min()))[None, None]
    if grid:
        return F.interpolate(m, size=size, mode="nearest")[0, 0]
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0, 0]


# --- overlays ---------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [False, True])
def test_overlay_on_the_model_input_is_the_alpha_blend_of_the_upsampled_map(grid: bool) -> None:
    model, x, e = _explained()  # a rectangular 24 x 40 input: height and width must not swap
    prep = xvit.get_adapter(model).preprocessing
    for i in range(len(e)):
        got = overlay_array(x[i], e, i, preprocessing=prep, grid=grid, alpha=0.6, cmap="viridis")
        pixels = prep.denormalize(x[i]).clamp(0, 1).permute(1, 2, 0).double().numpy()
        up = _scaled_and_upsampled(e.map[i], e.input_size, grid)
        want = _reference_blend(pixels, up, 0.6, "viridis")
        assert got.shape == (*e.input_size, 3)
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_grid_cells_follow_the_models_patches() -> None:
    model, _x, e = _explained()
    geo = xvit.get_adapter(model).geometry
    (gh, gw), (ph, pw) = geo.grid(), geo.patch_size
    flat = torch.zeros(3, *geo.image_size)  # a constant image: only the map varies
    out = overlay_array(flat, e, 0, grid=True, alpha=1.0)
    colours = colormaps["inferno"](e.normalized()[0].numpy())[..., :3]
    for r in range(gh):
        for c in range(gw):
            cell = out[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
            np.testing.assert_allclose(cell, np.broadcast_to(colours[r, c], cell.shape), atol=1e-6)


def test_original_image_gets_the_map_through_resize_and_centre_crop() -> None:
    # A 96 x 64 (w x h) original; the model takes 32 x 32 after resizing the short side to 32
    # (-> 48 x 32) and cropping 8 px from the left. So input pixel u is original 2u + 16, and
    # the input patch (row 1, col 2) of 8 px covers original x in [48, 64), y in [16, 32);
    # columns x < 16 and x >= 80 were cropped away and must be left untouched.
    prep = Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    hot = torch.zeros(1, 4, 4)
    hot[0, 1, 2] = 1.0
    e = xvit.Explanation(hot, "test", torch.tensor([0]), torch.tensor([1.0]), {}, (32, 32))
    out = overlay_array(original, e, preprocessing=prep, grid=True, alpha=1.0, cmap="gray")
    pixels = original / 255.0
    assert out.shape == (64, 96, 3)
    np.testing.assert_allclose(out[:, :16], pixels[:, :16], atol=1e-6)
    np.testing.assert_allclose(out[:, 80:], pixels[:, 80:], atol=1e-6)
    inside = np.zeros((64, 96), dtype=bool)
    inside[16:32, 48:64] = True
    assert np.allclose(out[inside], 1.0)  # gray colormap: white where the map is 1
    crop = np.zeros((64, 96), dtype=bool)
    crop[:, 16:80] = True
    assert np.allclose(out[crop & ~inside], 0.0)  # black elsewhere in the crop
    # the independent mapping the metrics use agrees: that original box lands on that patch
    assert prep.transform_boxes([(48, 16, 64, 32)], (96, 64)) == ((16.0, 8.0, 24.0, 16.0),)


def test_overlay_uses_the_originals_an_explanation_holds() -> None:
    model = xvit.load_model("xvit:digits-vit")
    prep = xvit.get_adapter(model).preprocessing
    big = Image.new("RGB", (200, 128), (40, 90, 40))  # another size and aspect than 64 x 64
    e = xvit.explain("attention", model, [big])
    fig = overlay(None, e, preprocessing=prep, colorbar=True)
    panel = fig.axes[0].images[0].get_array()
    assert panel.shape[:2] == (128, 200)  # drawn on the original, not the 64 x 64 input
    assert len(fig.axes) == 2  # the panel and its colorbar
    with pytest.raises(xvit.InvalidInputError, match="preprocessing"):
        overlay([big], e)  # the placement needs the model's preprocessing


def test_large_originals_are_downscaled_for_display_only() -> None:
    prep = Preprocessing(size=(32, 32), squash=True)
    hot = torch.zeros(1, 4, 4)
    hot[0, 3, 0] = 1.0  # bottom-left patch
    e = xvit.Explanation(hot, "test", torch.tensor([0]), torch.tensor([1.0]), {}, (32, 32))
    out = overlay_array(
        np.zeros((1000, 3000, 3), np.uint8),
        e,
        preprocessing=prep,
        grid=True,
        alpha=1.0,
        cmap="gray",
    )
    assert out.shape == (341, 1024, 3)
    white = out[..., 0] > 0.5
    rows, cols = np.nonzero(white)
    # the bottom-left quarter of each side, at the display scale
    assert rows.min() == pytest.approx(341 * 3 / 4, abs=1) and rows.max() == 340
    assert cols.min() == 0 and cols.max() == pytest.approx(1024 / 4 - 1, abs=1)


def test_overlay_figure_panels_titles_and_axes() -> None:
    model, x, e = _explained(batch=3)
    prep = xvit.get_adapter(model).preprocessing
    fig = overlay(x, e, preprocessing=prep, ncols=2)
    assert len([a for a in fig.axes if a.images]) == 3
    titles = [a.get_title() for a in fig.axes if a.images]
    for i, title in enumerate(titles):
        assert title.startswith("attention: class ") and f"{int(e.targets[i])}" in title
    one = overlay(x, e, index=1, preprocessing=prep, title=False)
    assert len(one.axes) == 1 and one.axes[0].get_title() == ""

    ax = fig.axes[-1]
    assert overlay(x, e, index=2, preprocessing=prep, ax=ax) is fig
    with pytest.raises(xvit.ParameterError, match="index"):
        overlay(x, e, ax=ax)  # several images on one axes
    with pytest.raises(xvit.ParameterError, match="alpha"):
        overlay(x, e, alpha=1.5)
    with pytest.raises(xvit.ParameterError, match="colormap"):
        overlay(x, e, cmap="no-such-map")
    with pytest.raises(xvit.InvalidInputError, match="3 maps"):
        overlay(x[:2], e)
    with pytest.raises(xvit.ParameterError, match="get_adapter"):
        overlay(x, e, preprocessing=model)  # the model instead of its preprocessing
    # one image of a batch, from the batch itself or from that image alone
    np.testing.assert_array_equal(
        overlay_array(x, e, 2, preprocessing=prep), overlay_array(x[2], e, 2, preprocessing=prep)
    )


def test_figures_never_import_pyplot(monkeypatch) -> None:
    # pyplot switches global state (backend, current figure); xvit must build figures without
    # it, so make importing it fail for the duration of the calls
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    model, x, e = _explained()
    prep = xvit.get_adapter(model).preprocessing
    overlay(x, e, preprocessing=prep, colorbar=True).canvas.draw()
    compare(x, {"attention": e}, {"attention": {"insertion": [0.5, 0.2]}}).canvas.draw()
    summaries = summarize(_records(), ["good", "poor"], ["insertion"])
    plot_curves(summaries, {"insertion": [0.0, 0.5, 1.0]}).canvas.draw()
    plot_times(summaries).canvas.draw()


# --- comparison grid --------------------------------------------------------------------
def _inside(inner, outer, tol: float = 0.5) -> bool:
    return (
        inner.x0 >= outer.x0 - tol
        and inner.y0 >= outer.y0 - tol
        and inner.x1 <= outer.x1 + tol
        and inner.y1 <= outer.y1 + tol
    )


def test_compare_grid_titles_and_nothing_clipped_or_overlapping() -> None:
    model = xvit.load_model("xvit:digits-vit")
    prep = xvit.get_adapter(model).preprocessing
    x = torch.randn(2, 3, 64, 64)
    methods = ["attention", "gradcam", "rollout"]
    results = {m: xvit.explain(m, model, x, target=[3, 5]) for m in methods}
    aucs = {"gradcam": {"insertion": [0.8123, 0.5], "deletion": torch.tensor([0.1, 0.25])}}
    fig = compare(x, results, aucs, preprocessing=prep)

    cells = [a for a in fig.axes if a.images]
    assert len(cells) == 2 * (1 + len(methods))  # rows: images; columns: input + methods
    assert len(fig.axes) == len(cells) + 1  # and one colorbar
    titles = [a.get_title() for a in cells]
    assert titles[0] == f"input\nclass 3, p={float(results['attention'].probabilities[0]):.2f}"
    assert titles[1:4] == ["attention", "gradcam\nins 0.81  del 0.10", "rollout"]
    assert titles[4].startswith("class 5, p=")
    assert titles[6] == "gradcam\nins 0.50  del 0.25"

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    boxes = []
    for a in cells:
        title = a.title.get_window_extent(renderer)
        assert _inside(title, page), f"title {a.get_title()!r} is clipped"
        boxes.append((title, a.get_window_extent(renderer)))
    for i, (title, _) in enumerate(boxes):
        for j, (other_title, other_axes) in enumerate(boxes):
            if i != j:
                assert not title.overlaps(other_title), "two titles overlap"
                assert not title.overlaps(other_axes), "a title covers another image"


def test_compare_labels_rows_without_clipping_or_overlap() -> None:
    _model, x, e = _explained()
    long = "a-folder-with-a-long-name/and-another-one/cat.png"
    fig = compare(x, {"attention": e}, row_labels=["dog.png", long])
    inputs = [a for a in fig.axes if a.images][::2]
    labels = [a.get_ylabel() for a in inputs]
    assert labels[0] == "dog.png"
    assert labels[1].endswith("cat.png") and "…" in labels[1] and len(labels[1]) < len(long)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [a.yaxis.label.get_window_extent(renderer) for a in inputs]
    for text in texts:
        assert _inside(text, fig.bbox), "a row label is clipped"
        assert not any(text.overlaps(b.get_window_extent(renderer)) for b in fig.axes)
    with pytest.raises(xvit.ParameterError, match="one label per image"):
        compare(x, {"attention": e}, row_labels=["dog.png"])


def test_save_overlays_never_writes_one_file_twice(tmp_path: Path) -> None:
    names = ["d1/x.png", "d2/x.png", "x.jpg", "x.png", "x.png"]
    model = xvit.load_model("xvit:digits-vit")
    e = xvit.explain("random", model, torch.randn(len(names), 3, 64, 64))
    paths = save_overlays(e, tmp_path, names)
    assert [p.name for p in paths] == [
        "d1_x_random.png",
        "d2_x_random.png",
        "x_random.png",
        "x-2_random.png",
        "x-3_random.png",
    ]
    assert sorted(tmp_path.iterdir()) == sorted(paths)


def test_compare_names_targets_when_columns_explain_different_classes() -> None:
    model = xvit.load_model("xvit:digits-vit")
    x = torch.randn(1, 3, 64, 64)
    fig = compare(
        x,
        {
            "as 3": xvit.explain("attention", model, x, target=3),
            "as 8": xvit.explain("attention", model, x, target=8),
        },
        colorbar=False,
    )
    assert [a.get_title() for a in fig.axes][1:] == ["as 3 (class 3)", "as 8 (class 8)"]


def test_compare_rejects_mismatched_inputs() -> None:
    _model, x, e = _explained()
    *_, e1 = _explained(batch=1)
    with pytest.raises(xvit.InvalidInputError, match="non-empty mapping"):
        compare(x, {})
    with pytest.raises(xvit.InvalidInputError, match="same images"):
        compare(x, {"a": e, "b": e1})
    with pytest.raises(xvit.ParameterError, match="not a column"):
        compare(x, {"a": e}, aucs={"b": {"insertion": [0.1, 0.2]}})
    with pytest.raises(xvit.ParameterError, match="one per image"):
        compare(x, {"a": e}, aucs={"a": {"insertion": [0.1]}})
    with pytest.raises(xvit.InvalidInputError, match="Explanation"):
        compare(x, {"a": x})


# --- benchmark plots --------------------------------------------------------------------
def _records() -> list[dict]:
    curves = {
        "good": [[0.0, 0.8, 1.0], [0.2, 0.6, 1.0], [0.1, 0.7, 0.9]],
        "poor": [[0.0, 0.1, 1.0], [0.0, 0.3, 0.8], [0.3, 0.2, 0.9]],
    }
    out = []
    for method, rows in curves.items():
        for i, c in enumerate(rows):
            auc = float(np.trapezoid(c, [0.0, 0.5, 1.0]))
            out.append(
                {
                    "id": str(i),
                    "method": method,
                    "time_s": 0.5 if method == "good" else 40.0,
                    "scores": {"insertion": auc},
                    "curves": {"insertion": c},
                }
            )
    return out


def test_curves_show_the_mean_and_the_95_percent_t_band() -> None:
    records = _records()
    summaries = summarize(records, ["good", "poor"], ["insertion"])
    fig = plot_curves(summaries, {"insertion": [0.0, 0.5, 1.0]})
    ax = fig.axes[0]
    assert ax.get_title() == "insertion (higher AUC is better)"
    lines = {line.get_label().split(" ")[0]: line for line in ax.get_lines()}
    bands = ax.collections
    assert len(bands) == 2
    for k, method in enumerate(["good", "poor"]):
        values = np.array([r["curves"]["insertion"] for r in records if r["method"] == method])
        mean = values.mean(axis=0)
        half = stats.t.ppf(0.975, 2) * values.std(axis=0, ddof=1) / np.sqrt(3)
        np.testing.assert_allclose(lines[method].get_ydata(), mean)
        aucs = [r["scores"]["insertion"] for r in records if r["method"] == method]
        assert f"({np.mean(aucs):.3f})" in lines[method].get_label()
        ys = bands[k].get_paths()[0].vertices[:, 1]
        assert np.isclose(ys.min(), (mean - half).min()) and np.isclose(
            ys.max(), (mean + half).max()
        )
        for y in np.concatenate([mean - half, mean + half]):
            assert np.isclose(ys, y).any()


def test_plot_curves_needs_curves() -> None:
    records = [{"id": "0", "method": "m", "time_s": 1.0, "scores": {"pointing_game": 1.0}}]
    summaries = summarize(records, ["m"], ["pointing_game"])
    with pytest.raises(xvit.ParameterError, match="no curves"):
        plot_curves(summaries, {})


def test_curve_panels_titles_and_axes_come_from_the_metric_classes() -> None:
    curves = {"mine": [0.5, 0.5], "deletion": [0.9, 0.1], "insertion": [0.1, 0.9]}
    records = [
        {"id": str(i), "method": "m", "time_s": 1.0, "scores": {}, "curves": curves}
        for i in range(2)
    ]
    summaries = summarize(records, ["m"], list(curves))
    fractions = {"mine": [0.0, 1.0], "deletion": [0.0, 1.0], "insertion": [0.0, 1.0]}
    fig = plot_curves(summaries, fractions)  # an unregistered curve metric comes last
    assert [(a.get_title(), a.get_xlabel()) for a in fig.axes] == [
        ("insertion (higher AUC is better)", "fraction of pixels inserted"),
        ("deletion (lower AUC is better)", "fraction of pixels deleted"),
        ("mine", "fraction of pixels changed"),
    ]


def test_cells_abbreviate_metrics_by_their_declared_short_names() -> None:
    _, x, e = _explained()
    aucs = {"attention": {"pointing_game": [1.0, 0.0], "energy_pointing_game": [0.5, 0.25]}}
    fig = compare(x, {"attention": e}, aucs, colorbar=False)
    assert fig.axes[1].get_title() == "attention\npg 1.00  energy_pointing_game 0.50"
    with pytest.warns(DeprecationWarning, match="short_name"):
        from xvit.viz import METRIC_ABBREVIATIONS
    from xvit.metrics import get_metric, list_metrics

    declared = {n: get_metric(n).short_name for n in list_metrics()}
    assert {n: s for n, s in declared.items() if s} == METRIC_ABBREVIATIONS
    assert {"deletion": "del", "insertion": "ins", "pointing_game": "pg"}.items() <= (
        METRIC_ABBREVIATIONS.items()
    )


def test_time_chart_bars_are_seconds_per_image() -> None:
    summaries = summarize(_records(), ["good", "poor"], ["insertion"])
    ax = plot_times(summaries).axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([0.5, 40.0])  # 3 images each: total time / images
    assert ax.get_xscale() == "log"  # an 80-fold spread
    assert [t.get_text() for t in ax.get_yticklabels()] == ["good", "poor"]


def test_bench_writes_curves_and_time_chart_next_to_its_tables(tmp_path: Path) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    data = [
        SimpleNamespace(
            image=Image.fromarray(np.full((32, 32, 3), 30 * i, np.uint8)),
            label=i % 5,
            boxes=((0, 0, 16, 16),),
            id=f"img{i}",
        )
        for i in range(3)
    ]
    results = run_benchmark(
        model,
        data,
        methods="attention,random",
        metrics="insertion,deletion",
        n=3,
        out_dir=tmp_path,
        progress=False,
    )
    for name in ("curves.png", "times.png", "table.md", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    assert (tmp_path / "times.png").read_bytes()[:8] == PNG
    fig = plot_curves(results)  # the returned results plot the same way
    assert [a.get_title().split()[0] for a in fig.axes] == ["insertion", "deletion"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == {"attention", "random"}


# --- command line -----------------------------------------------------------------------
def test_explain_with_several_methods_writes_one_comparison_grid(tmp_path: Path) -> None:
    from xvit.data import get_dataset

    paths = []
    for i, sample in enumerate(get_dataset("digits", split="test", n=2)):
        paths.append(tmp_path / f"digit{i}.png")
        sample.image.save(paths[-1])
    out = tmp_path / "out"
    args = ["explain", *map(str, paths), "--methods", "attention,gradcam,random"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png"]  # one file, no overlays
    assert "comparison grid (2 images x 3 methods)" in result.output
    with Image.open(out / "comparison.png") as img:
        width, height = img.size
    assert width > 1.5 * height  # 4 columns (input + 3 methods) by 2 rows
