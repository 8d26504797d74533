"""The benchmark runner on a tiny random ViT and a tiny fake dataset."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import xvit
from conftest import MODEL_FACTORIES
from xvit.bench import estimate, image_seed, run_benchmark
from xvit.bench.cli import bench_command
from xvit.metrics import Metric, MetricResult, list_metrics


@dataclass(frozen=True)
class Sample:
    """The agreed xvit.data.Sample shape."""

    image: Image.Image
    label: int
    boxes: tuple[tuple[float, float, float, float], ...]
    id: str


def fake_dataset(n: int, seed: int = 0) -> list[Sample]:
    """Non-square images with one bright square each (its box), a few without a box."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = 48, 40
        arr = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
        arr[y0 : y0 + 12, x0 : x0 + 12] = 230
        boxes = () if i % 5 == 4 else ((float(x0), float(y0), x0 + 12.0, y0 + 12.0),)
        out.append(Sample(Image.fromarray(arr), int(rng.integers(0, 5)), boxes, f"img-{i:03d}"))
    return out


class Counting(xvit.Explainer):
    """A deterministic map (channel-0 brightness per patch) that counts the images it sees."""

    name = "counting"
    family = "test"

    def __init__(self) -> None:
        self.fail_after: int | None = None  # not a parameter: a crash switch for tests
        self.calls = 0
        self.images = 0

    def compute(self, adapter, inputs, target):
        if self.fail_after is not None and self.images >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.images += len(inputs)
        gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
        return torch.nn.functional.adaptive_avg_pool2d(inputs[:, :1], (gh, gw))[:, 0]


FAST = ["insertion", "pointing_game", "energy_pointing_game"]


@pytest.fixture
def model() -> torch.nn.Module:
    return MODEL_FACTORIES["timm-vit"]()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_results_written_and_table_printed(model, tmp_path: Path, capsys) -> None:
    data = fake_dataset(5)
    res = run_benchmark(
        model,
        data,
        methods=["random", Counting()],
        metrics="all",
        n=5,
        images_per_call=2,
        out_dir=tmp_path,
        progress=True,  # prints the table at the end
    )
    out = capsys.readouterr().out
    metrics = list_metrics()
    for name in ["random", "counting", *metrics, "expl/s"]:
        assert name in out
    assert res.table in out
    recs = lines(tmp_path / "results.jsonl")
    assert len(recs) == 10 and {r["method"] for r in recs} == {"random", "counting"}
    assert all(set(r["scores"]) == set(metrics) for r in recs)
    # the image without a box (index 4) has no pointing-game score; the others have 0 or 1
    for r in recs:
        pg = r["scores"]["pointing_game"]
        assert (pg is None) if r["id"] == "img-004" else pg in (0.0, 1.0)
        assert r["target"] == r["label"]
    assert len(recs[0]["curves"]["insertion"]) == 33  # 32 input rows + 1
    # summary equals the mean over records, with a t interval
    ins = [r["scores"]["insertion"] for r in recs if r["method"] == "random"]
    est = res.summary("random").metrics["insertion"]
    assert est.mean == pytest.approx(sum(ins) / len(ins))
    assert est.ci_low < est.mean < est.ci_high
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(metrics)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["methods"]["counting"]["images"] == 5
    assert len(summary["methods"]["counting"]["mean_curves"]["deletion"]) == 33
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.summary("counting").time_s > 0 and res.summary("counting").per_second > 0


def test_every_method_sees_the_same_images_and_targets(model, tmp_path: Path) -> None:
    res = run_benchmark(
        model,
        fake_dataset(4),
        methods=["random", Counting()],
        metrics=["pointing_game"],
        n=4,
        target="prediction",
        progress=False,
    )
    by = {}
    for r in res.records:
        by.setdefault(r["id"], set()).add((r["target"], r["prediction"]))
        assert r["target"] == r["prediction"]
    assert all(len(v) == 1 for v in by.values()) and len(by) == 4


class Brightness(xvit.Explainer):
    """The map is the input's first channel at full resolution: its maximum is on the square."""

    name = "brightness"
    family = "test"

    def compute(self, adapter, inputs, target):
        return inputs[:, 0].clone()


def test_boxes_reach_the_metrics_in_input_coordinates(model) -> None:
    # a map that peaks on the bright square hits its box even with a 1 px tolerance, which
    # holds only if the runner maps boxes through the model's resize and centre crop
    data = fake_dataset(5, seed=3)
    sharp = xvit.metrics.PointingGame(tolerance=1)
    res = run_benchmark(model, data, methods=[Brightness()], metrics=[sharp], n=5, progress=False)
    scores = [r["scores"]["pointing_game"] for r in res.records]
    assert scores[4] is None  # the image without a box
    assert scores[:4] == [1.0, 1.0, 1.0, 1.0]
    flipped = [
        Sample(s.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), s.label, s.boxes, s.id)
        for s in data[:4]
    ]
    res = run_benchmark(
        model, flipped, methods=[Brightness()], metrics=[sharp], n=4, progress=False
    )
    assert sum(r["scores"]["pointing_game"] or 0 for r in res.records) < 4


def test_resume_does_not_recompute(model, tmp_path: Path) -> None:
    data = fake_dataset(6)
    first = Counting()
    run_benchmark(
        model,
        data,
        methods=[first],
        metrics=FAST,
        n=4,
        images_per_call=3,
        out_dir=tmp_path,
        progress=False,
    )
    assert first.images == 4
    again = Counting()
    res = run_benchmark(
        model,
        data,
        methods=[again],
        metrics=FAST,
        n=4,
        images_per_call=3,
        out_dir=tmp_path,
        progress=False,
    )
    assert again.images == 0 and res.summary("counting").images == 4
    more = Counting()
    run_benchmark(
        model,
        data,
        methods=[more],
        metrics=FAST,
        n=6,
        images_per_call=3,
        out_dir=tmp_path,
        progress=False,
    )
    assert more.images == 2  # only the two new images
    assert len(lines(tmp_path / "results.jsonl")) == 6
    # a metric that was not computed yet makes the pairs run again
    extra = Counting()
    run_benchmark(
        model,
        data,
        methods=[extra],
        metrics=[*FAST, "deletion"],
        n=6,
        images_per_call=3,
        out_dir=tmp_path,
        progress=False,
    )
    assert extra.images == 6


def test_interrupted_run_resumes_where_it_stopped(model, tmp_path: Path) -> None:
    data = fake_dataset(6)
    crashing = Counting()
    crashing.fail_after = 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_benchmark(
            model,
            data,
            methods=[crashing],
            metrics=FAST,
            n=6,
            images_per_call=2,
            out_dir=tmp_path,
            progress=False,
        )
    assert len(lines(tmp_path / "results.jsonl")) == 2
    # an unfinished last line, as a kill during a write leaves it
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"id": "img-002", "meth')
    rest = Counting()
    with pytest.warns(UserWarning, match="unfinished last line"):
        res = run_benchmark(
            model,
            data,
            methods=[rest],
            metrics=FAST,
            n=6,
            images_per_call=2,
            out_dir=tmp_path,
            progress=False,
        )
    assert rest.images == 4
    assert len(lines(tmp_path / "results.jsonl")) == 6
    assert [r["id"] for r in res.records] == [s.id for s in data]


def test_corrupt_results_file_is_reported_not_overwritten(model, tmp_path: Path) -> None:
    data = fake_dataset(3)
    run_benchmark(
        model, data, methods=[Counting()], metrics=FAST, n=3, out_dir=tmp_path, progress=False
    )
    path = tmp_path / "results.jsonl"
    text = path.read_text().splitlines(keepends=True)
    text[1] = "this is not json\n"
    path.write_text("".join(text))
    before = path.read_bytes()
    c = Counting()
    with pytest.raises(xvit.InvalidInputError, match=r"results.jsonl line 2 is not a valid"):
        run_benchmark(model, data, methods=[c], metrics=FAST, n=3, out_dir=tmp_path, progress=False)
    assert path.read_bytes() == before and c.images == 0
    # a valid JSON line with the wrong fields is corrupt too
    text[1] = '{"id": 3, "method": "counting", "scores": {}}\n'
    path.write_text("".join(text))
    with pytest.raises(xvit.InvalidInputError, match="field 'id'"):
        run_benchmark(
            model, data, methods=[Counting()], metrics=FAST, n=3, out_dir=tmp_path, progress=False
        )
    # --no-resume moves the damaged file aside and starts over
    run_benchmark(
        model,
        data,
        methods=[Counting()],
        metrics=FAST,
        n=3,
        out_dir=tmp_path,
        resume=False,
        progress=False,
    )
    assert len(lines(path)) == 3
    assert len(list(tmp_path.glob("results-*.jsonl"))) == 1


def test_resuming_with_other_settings_is_refused(model, tmp_path: Path) -> None:
    data = fake_dataset(2)
    run_benchmark(
        model, data, methods=[Counting()], metrics=FAST, n=2, out_dir=tmp_path, progress=False
    )
    with pytest.raises(xvit.ParameterError, match="target"):
        run_benchmark(
            model,
            data,
            methods=[Counting()],
            metrics=FAST,
            n=2,
            out_dir=tmp_path,
            target="prediction",
            progress=False,
        )
    with pytest.raises(xvit.ParameterError, match="insertion"):
        run_benchmark(
            model,
            data,
            methods=[Counting()],
            metrics=[xvit.metrics.Insertion(step=64), "pointing_game"],
            n=2,
            out_dir=tmp_path,
            progress=False,
        )


def test_randomized_methods_do_not_depend_on_batching(model) -> None:
    data = fake_dataset(5)
    a = run_benchmark(
        model,
        data,
        methods="random",
        metrics=["insertion", "pointing_game"],
        n=5,
        images_per_call=1,
        progress=False,
    )
    b = run_benchmark(
        model,
        data,
        methods="random",
        metrics=["insertion", "pointing_game"],
        n=5,
        images_per_call=5,
        progress=False,
    )
    for ra, rb in zip(a.records, b.records):
        assert ra["id"] == rb["id"]
        assert ra["scores"]["pointing_game"] == rb["scores"]["pointing_game"]
        assert ra["scores"]["insertion"] == pytest.approx(rb["scores"]["insertion"], abs=1e-5)
    # the maps are the method's with the image's own seed
    x = torch.stack([xvit.get_adapter(model).preprocessing(s.image) for s in data[:1]])
    want = xvit.explain("random", model, x, seed=image_seed(0, data[0].id)).map
    got = xvit.explain("random", model, x, seed=image_seed(0, "img-000")).map
    assert torch.equal(want, got)
    assert image_seed(0, "img-000") != image_seed(1, "img-000")


def test_all_means_every_registered_method_including_plugins() -> None:
    from xvit.bench.runner import resolve_methods

    @xvit.register_method
    class Plugin(Counting):
        name = "plugin-test-method"

    try:
        names = [e.name for e in resolve_methods("all")]
        # every method that can run here (an unavailable one is skipped, with a warning)
        registered = [m for m in xvit.list_methods() if not xvit.get_method(m).unavailable_reason()]
    finally:
        xvit.method_registry.unregister("plugin-test-method")
    assert "plugin-test-method" in names and "random" in names
    assert names == registered


def test_plugin_metric_instances_are_used(model) -> None:
    class Mass(Metric):
        name = "mass"
        higher_is_better = False

        def __call__(self, model, x_batch, y_batch, a_batch, s_batch=None, *, seeds=None):
            return MetricResult(self.name, torch.full((len(x_batch),), 0.25, dtype=torch.float64))

    res = run_benchmark(
        model, fake_dataset(2), methods="random", metrics=[Mass()], n=2, progress=False
    )
    assert res.summary("random").metrics["mass"].mean == 0.25
    assert "mass ↓" in res.table


def test_bad_options_raise_clear_errors(model) -> None:
    data = fake_dataset(2)
    with pytest.raises(xvit.ParameterError, match="target"):
        run_benchmark(model, data, methods="random", target="truth", n=2, progress=False)
    with pytest.raises(xvit.UnknownNameError, match="gradmask"):
        run_benchmark(model, data, methods="gradmsk", n=2, progress=False)
    with pytest.raises(xvit.UnknownNameError, match="insertion"):
        run_benchmark(model, data, methods="random", metrics="insertoin", n=2, progress=False)
    with pytest.raises(xvit.ParameterError, match="listed twice"):
        run_benchmark(model, data, methods="random,random", n=2, progress=False)
    bad = [Sample(data[0].image, 7, (), "a")]
    with pytest.raises(xvit.InvalidInputError, match="label 7"):
        run_benchmark(model, bad, methods="random", metrics=["pointing_game"], n=1, progress=False)
    twice = [data[0], data[0]]
    with pytest.raises(xvit.InvalidInputError, match="occurs twice"):
        run_benchmark(model, twice, methods="random", n=2, progress=False)


def test_estimate_is_a_student_t_interval() -> None:
    from scipy import stats

    values = [0.1, 0.4, 0.35, 0.8, None, float("nan")]
    e = estimate(values)
    xs = np.array([0.1, 0.4, 0.35, 0.8])
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=xs.mean(), scale=stats.sem(xs))
    assert e.n == 4 and e.mean == pytest.approx(xs.mean())
    assert (e.ci_low, e.ci_high) == pytest.approx((lo, hi))
    assert math.isnan(estimate([]).mean) and math.isnan(estimate([1.0]).ci_low)


@pytest.fixture
def bench_args(model, tmp_path: Path, monkeypatch) -> list[str]:
    """Arguments of xvit bench for the tiny model (as a checkpoint) on 3 fake images."""
    ckpt = tmp_path / "tiny.safetensors"
    kwargs = dict(num_classes=5, embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8)
    xvit.save_checkpoint(
        model,
        ckpt,
        timm_name="vit_tiny_patch16_224",
        model_kwargs=kwargs,
        preprocessing=xvit.Preprocessing(size=(32, 32)),
    )
    fake = types.ModuleType("xvit.data")
    fake.get_dataset = lambda name, **kw: fake_dataset(kw.get("n", 3))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xvit.data", fake)
    return ["--model", str(ckpt), "--data", "fake:n=3", "--n", "3", "--images-per-call", "2"]


def test_cli(bench_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        *bench_args,
        "--methods",
        "random,gradmask",
        "--metrics",
        "pointing_game,deletion",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    assert "| gradmask |" in result.output and "deletion ↓" in result.output
    assert len(lines(out / "results.jsonl")) == 6
    (out / "results.jsonl").write_text("garbage\n")
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 2
    assert "error:" in result.output and "line 1 is not a valid result record" in result.output


def test_cli_sets_metric_parameters(bench_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = ["pointing_game.tolerance=1.5", "upsample=bilinear", "masks_per_layer=1"]
    args = [*bench_args, "--methods", "random,gradmask", "--metrics", "pointing_game,insertion"]
    args += [a for s in settings for a in ("-p", s)]
    result = CliRunner().invoke(bench_command, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("run.json", "summary.json"):
        data = json.loads((out / name).read_text())
        config = data.get("config", data)
        assert config["metrics"]["pointing_game"] == {"tolerance": 1.5, "upsample": "bilinear"}
        assert config["metrics"]["insertion"]["upsample"] == "bilinear"  # a bare KEY: both
        assert config["methods"]["gradmask"]["masks_per_layer"] == 1
        assert config["methods"]["random"] == {"seed": 0}
    assert "pointing_game: a hit within 1.5 px" in (out / "table.md").read_text()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--metrics", "pointing_game,insertoin"], "Did you mean 'insertion'?"),
        (["-p", "pointing_game.tolerence=2"], "Did you mean 'tolerance'?"),
        (["-p", "pointing_game.tolerance=-2"], "tolerance must be a positive number"),
        (["--metrics", "pointing_game", "-p", "insertion.step=64"], "--metrics pointing_game,"),
        (["--methods", "random", "-p", "masks_per_layer=2"], "has a parameter"),
        (["-p", "pointing_gam.tolerance=2"], "Did you mean 'pointing_game'"),
    ],
)
def test_cli_checks_names_and_parameters_before_the_model_loads(
    bench_args: list[str], args: list[str], says: str, monkeypatch
) -> None:
    import xvit.bench._specs

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(xvit.bench._specs, "load_model", no_load)
    result = CliRunner().invoke(bench_command, [*bench_args, *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and says in result.output, result.output


def test_bench_and_demo_play_the_pointing_game_with_one_tolerance() -> None:
    from xvit.bench.runner import resolve_metrics
    from xvit.demo import demo_metrics

    size = (64, 64)  # the shipped digits
    (bench,) = resolve_metrics("pointing_game")
    (demo,) = [m for m in demo_metrics(size) if m.name == "pointing_game"]
    maps = torch.zeros(2, *size)
    maps[:, 10, 10] = 1.0
    boxes = [[(14, 10, 15, 11)], [(15, 10, 16, 11)]]  # 4 px and 5 px from the maximum
    x = torch.zeros(2, 3, *size)
    scores = [m(None, x, [0, 0], maps, boxes).scores.tolist() for m in (bench, demo)]
    assert scores == [[1.0, 0.0], [1.0, 0.0]]  # 15 px x 64 / 224 = 4.3 px in both
    assert bench.footnote(size) == demo.footnote(size)


def test_table_footer_states_the_pointing_game_tolerance(model) -> None:
    data = fake_dataset(2)
    res = run_benchmark(model, data, methods="random", metrics="pointing_game", n=2, progress=False)
    footer = res.table.splitlines()[-1]
    assert footer.startswith("pointing_game: a hit within 2.1 px")  # 15 x 32 / 224
    assert "15 px per 224 px of the input's shorter side" in footer
    assert res.config["notes"] == [footer]
    sharp = xvit.metrics.PointingGame(tolerance=1)
    res = run_benchmark(model, data, methods="random", metrics=[sharp], n=2, progress=False)
    assert "within 1.0 px" in res.table and "set by the tolerance parameter" in res.table


def test_table_footer_states_the_insertion_and_deletion_protocols(model) -> None:
    data = fake_dataset(2)
    ins = xvit.metrics.Insertion(step=64)  # 2 rows of the 32 px test input
    dele = xvit.metrics.Deletion(protocol="gradmask")
    res = run_benchmark(model, data, methods="random", metrics=[ins, dele], n=2, progress=False)
    footer = res.table.splitlines()[-2:]
    assert footer[0].startswith("insertion: protocol 'xvit', blur substrate, 17 curve points")
    assert "steps of 2 rows of 32 px" in footer[0] and "tied pixels: groups" in footer[0]
    assert footer[1].startswith("deletion: protocol 'gradmask'") and "12 curve points" in footer[1]
    assert "tied pixels: argsort" in footer[1]
    assert res.config["notes"] == footer


def test_dataset_options_are_read_by_the_rule_of_p() -> None:
    from xvit._settings import parse_settings, parse_spec
    from xvit.bench.runner import load_samples

    items = ["root=/data/x.y", "index-file=s.txt", "n=50", "scale=0.5", "flag=True"]
    name, options = parse_spec("imagenet:" + ",".join(items), what="option", example="x:n=1")
    assert name == "imagenet"
    assert options == {
        "root": "/data/x.y",
        "index_file": "s.txt",
        "n": 50,
        "scale": 0.5,
        "flag": True,
    }
    assert options == {s.key: s.value for s in parse_settings(items)}
    with pytest.raises(xvit.ParameterError, match="dataset option 'n' is not KEY=VALUE; write"):
        load_samples("digits:n", 1)
    with pytest.raises(xvit.ParameterError, match=r"dataset option 'a\.n=1' is not KEY=VALUE"):
        load_samples("digits:a.n=1", 1)


def test_images_per_call_has_its_own_name(model) -> None:
    """The benchmark's group of images per call is ``images_per_call``; its old name
    ``batch_size`` (the name of a method's model inputs per forward) still works, with a
    DeprecationWarning, and gives the same records; so does ``--batch-size`` on the CLI."""
    data = fake_dataset(2)
    kw = dict(methods="random", metrics="pointing_game", n=2, progress=False)
    new = run_benchmark(model, data, images_per_call=1, **kw)
    with pytest.warns(DeprecationWarning, match="images_per_call"):
        old = run_benchmark(model, data, batch_size=1, **kw)
    assert [r["scores"] for r in new.records] == [r["scores"] for r in old.records]
    with pytest.raises(xvit.ParameterError, match="images_per_call must be a positive integer"):
        run_benchmark(model, data, images_per_call=0, **kw)
    option = {p.name: p for p in bench_command.params}["images_per_call"]
    assert {"--images-per-call", "--batch-size"} <= set(option.opts)
