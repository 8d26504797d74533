"""The benchmark report's statistics (paired tests, Holm, normalised scores), its manifest and
its saved maps (``--save-maps``, :meth:`xvit.Explanation.save`, :func:`xvit.load_explanation`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import test_bench
import torch
from click.testing import CliRunner
from test_bench import Counting, fake_dataset, lines
from test_distributed import _run, _torchrun, needs_gloo

import xvit
from xvit._fingerprint import state_dict_hash
from xvit.bench import run_benchmark
from xvit.bench._compare import compare
from xvit.bench._stats import holm, normalized, signed_rank_test
from xvit.bench.cli import bench_command

#: The tiny model on 3 fake images as xvit bench arguments (test_bench's fixture).
bench_args = test_bench.bench_args


@pytest.fixture
def model() -> torch.nn.Module:
    return test_bench.MODEL_FACTORIES["timm-vit"]()


# --- the paired test, on scores whose answer is known ------------------------------------
def test_signed_rank_test_matches_a_hand_computed_example() -> None:
    # differences 1.5, -0.5, 2.5, 3.5, -4.5, 5.5: |d| ranks 2, 1, 3, 4, 5, 6, so the negative
    # ranks sum to 1 + 5 = 6 (the statistic) and the positive ones to 15. Of the 64 subsets
    # of {1..6}, 14 sum to at most 6 (sums 0..6: 1+1+1+2+2+3+4), so p = 2 * 14 / 64.
    b = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    a = b + np.array([1.5, -0.5, 2.5, 3.5, -4.5, 5.5])
    test = signed_rank_test(a, b)
    assert (test.n, test.nonzero, test.statistic, test.method) == (6, 6, 6.0, "exact")
    assert test.pvalue == 28 / 64
    # images where the two agree are dropped; an undefined score drops its image
    with_zeros = signed_rank_test(np.r_[a, 7.0, 8.0, np.nan], np.r_[b, 7.0, 8.0, 1.0])
    assert (with_zeros.n, with_zeros.nonzero, with_zeros.pvalue) == (8, 6, 28 / 64)


def test_ties_get_the_exact_sign_test() -> None:
    # a 0/1 score: one method hits on 7 images the other misses, the other on 1. Every |d| is
    # tied, and the signed-rank test is the sign test: p = 2 * (C(8,0) + C(8,1)) / 2**8.
    a = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0], dtype=float)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 0], dtype=float)
    test = signed_rank_test(a, b)
    assert (test.n, test.nonzero, test.method) == (10, 8, "enumerated")
    assert test.pvalue == 2 * 9 / 256
    # scipy's own permutation test (its method="auto" on tied data in recent versions) agrees
    import scipy
    from scipy import stats

    if tuple(int(v) for v in scipy.__version__.split(".")[:2]) >= (1, 15):
        d = (a - b)[a != b]
        assert test.pvalue == pytest.approx(stats.wilcoxon(d, method="auto").pvalue, abs=1e-12)


def test_identical_scores_have_no_difference_and_large_samples_use_the_normal_law() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(12)
    same = signed_rank_test(a, a.copy())
    assert (same.pvalue, same.nonzero, same.statistic) == (1.0, 0, 0.0)
    assert math.isnan(signed_rank_test(np.array([np.nan]), np.array([1.0])).pvalue)
    # roundoff of a subtraction neither makes equal scores differ nor splits a tie
    assert signed_rank_test(np.array([0.1 + 0.2]), np.array([0.3])).nonzero == 0
    from scipy import stats

    b = rng.random(80)
    c = b + rng.normal(0.05, 0.1, 80)
    big = signed_rank_test(c, b)
    assert big.method == "normal"
    assert big.pvalue == pytest.approx(stats.wilcoxon(c - b, method="asymptotic").pvalue)
    # at most 5 differing images can never reach 0.05: the smallest p is 2 / 2**5
    five = signed_rank_test(np.arange(5.0) + 10, np.arange(5.0))
    assert five.pvalue == 2 / 32


def test_holm_adjustment_is_exact_monotone_and_capped() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(np.array([0.5, 0.6])).tolist() == [1.0, 1.0]  # 2 x 0.5, capped at 1
    assert holm(np.array([0.2])).tolist() == [0.2]  # one test: unchanged
    nan = holm(np.array([np.nan, 0.02, 0.04]))  # an untested method does not count
    assert math.isnan(nan[0]) and nan[1:].tolist() == pytest.approx([0.04, 0.04])
    raw = np.random.default_rng(1).random(9)
    adjusted = holm(raw)
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0) and np.all(adjusted >= raw)


def test_normalised_scores_are_sign_aware() -> None:
    assert normalized(0.5, baseline=0.25, best=0.75) == 0.5
    assert normalized(0.5, baseline=1.0, best=0.0) == 0.5  # lower is better
    assert normalized(1.25, baseline=1.0, best=0.0) == -0.25  # worse than random
    assert math.isnan(normalized(0.3, baseline=0.2, best=0.2))  # best == random


def _records(scores: dict[str, list[float | None]], metric: str = "s") -> list[dict]:
    return [
        {"id": f"img{i}", "method": m, "scores": {metric: v}}
        for m, values in scores.items()
        for i, v in enumerate(values)
    ]


def _means(scores: dict[str, list[float | None]], metric: str = "s") -> dict:
    return {
        m: {metric: float(np.mean([v for v in values if v is not None]))}
        for m, values in scores.items()
    }


def test_compare_marks_equal_methods_and_finds_the_clearly_worse() -> None:
    best = [float(v) for v in range(1, 13)]
    scores = {
        "random": [v - 0.5 - 0.01 * i for i, v in enumerate(best)],  # worse on all 12
        "twin": list(best),  # the best's own scores
        "best": best,
    }
    c = compare(_records(scores), _means(scores), {"s": True})["s"]
    assert c.best == "twin"  # equal means: the first in method order
    assert c.tests["best"].pvalue == 1.0 and c.same_as_best("best")
    # 12 images all worse: exact p = 2 / 2**12, times 2 methods compared (Holm)
    assert c.tests["random"].pvalue == 2 / 4096
    assert c.adjusted["random"] == 2 * 2 / 4096 and not c.same_as_best("random")
    assert c.normalized == {"random": 0.0, "twin": 1.0, "best": 1.0}
    # lower is better: the order turns
    c = compare(_records(scores), _means(scores), {"s": False})["s"]
    assert c.best == "random" and c.normalized == {} and "no method is better" in c.note


def test_compare_without_random_and_with_undefined_scores() -> None:
    scores = {"a": [1.0, None, 3.0], "b": [None, None, None]}
    c = compare(_records(scores), {"a": {"s": 2.0}, "b": {"s": math.nan}}, {"s": True})["s"]
    assert c.best == "a" and c.normalized == {} and "random baseline" in c.note
    assert math.isnan(c.tests["b"].pvalue) and not c.same_as_best("b")


# --- Explanation.save / xvit.load_explanation --------------------------------------------
def test_explanation_roundtrip(tmp_path: Path) -> None:
    net = xvit.load_model("xvit:digits-vit")
    e = xvit.explain("rollout", net, torch.rand(2, 3, 64, 64), target=[3, 5])
    e.ids, e.metadata = ["a", "b"], {"note": ("kept", 1)}
    back = xvit.load_explanation(e.save(tmp_path / "deep" / "r.safetensors", inputs=True))
    assert torch.equal(back.map, e.map) and torch.equal(back.targets, e.targets)
    assert torch.equal(back.probabilities, e.probabilities) and torch.equal(back.inputs, e.inputs)
    assert (back.method, back.params, back.input_size) == ("rollout", e.params, (64, 64))
    assert back.class_names == e.class_names and back.ids == ["a", "b"]
    assert back.metadata == {"note": ["kept", 1]}  # JSON: a tuple comes back a list
    assert xvit.load_explanation(e.save(tmp_path / "small.safetensors")).inputs is None


def test_loading_a_bad_file_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(xvit.InvalidInputError, match=r"no file .*--save-maps"):
        xvit.load_explanation(tmp_path / "missing.safetensors")
    e = xvit.Explanation(
        torch.ones(1, 2, 2), "x", torch.tensor([0]), torch.tensor([1.0]), {}, (4, 4)
    )
    path = e.save(tmp_path / "x.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(xvit.InvalidInputError, match="not a readable safetensors file"):
        xvit.load_explanation(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"map": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(xvit.InvalidInputError, match="not a saved xvit explanation"):
        xvit.load_explanation(tmp_path / "other.safetensors")
    e.ids = ["a", "b"]
    with pytest.raises(xvit.InvalidInputError, match="1 maps but 2 ids"):
        e.save(tmp_path / "y.safetensors")


# --- the benchmark: table, manifest, saved maps ------------------------------------------
def test_table_marks_the_best_and_the_summary_has_the_tests(model, tmp_path: Path) -> None:
    res = run_benchmark(
        model,
        fake_dataset(4),
        methods="random,rollout",
        metrics="insertion,pointing_game",
        n=4,
        out_dir=tmp_path,
        progress=False,
    )
    assert res.table.count("**") == 4  # one bold cell per metric
    assert "Wilcoxon signed-rank" in res.table and "Normalised (0 = random, 1 = best)" in res.table
    summary = json.loads((tmp_path / "summary.json").read_text())
    for metric in ("insertion", "pointing_game"):
        best = summary["comparisons"][metric]["best"]
        assert summary["methods"][best]["metrics"][metric]["vs_best"] is None
        other = ({"random", "rollout"} - {best}).pop()
        test = summary["methods"][other]["metrics"][metric]["vs_best"]
        assert test["n"] == 4 and 0 < test["p"] <= 1 and test["same_as_best"]  # 4 images
        assert summary["methods"][best]["metrics"][metric]["normalized"] in (1.0, None)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["model"]["hash"] == state_dict_hash(model)
    assert manifest["data"]["image_ids"] == [f"img-{i:03d}" for i in range(4)]
    assert manifest["methods"]["rollout"]["params"] == {"head_fusion": "mean", "discard_ratio": 0.0}
    assert manifest["metrics"]["insertion"]["params"]["protocol"] == "xvit"
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0]
    assert manifest["seeds"]["seed"] == 0 and manifest["device"]["device"] == "cpu"
    assert any("pointing_game" in note for note in manifest["protocol"]["notes"])


def test_table_without_random_says_so(model) -> None:
    res = run_benchmark(
        model, fake_dataset(2), methods="rollout", metrics="insertion", n=2, progress=False
    )
    assert "No normalised scores: the random baseline" in res.table
    assert "Normalised (0" not in res.table


def test_saved_maps_are_the_scored_maps_and_resume_completes_them(
    model,
    tmp_path: Path,
    capsys,
) -> None:
    data = fake_dataset(4)
    counting = Counting()
    common = dict(metrics="insertion", out_dir=tmp_path, images_per_call=3)
    run_benchmark(model, data, methods=["random", counting], n=2, progress=False, **common)
    assert not (tmp_path / "maps").exists()
    # 2 images were scored without maps: they are explained again, and said so
    res = run_benchmark(
        model, data, methods=["random", counting], n=4, save_maps=True, progress=True, **common
    )
    err = capsys.readouterr().err
    assert "4 (image, method) pairs" in err and "without --save-maps" in err
    assert counting.images == 2 + 4  # the 2 earlier images again, and the 2 new ones
    for method in ("random", "counting"):
        e = xvit.load_explanation(res.files[f"maps/{method}"])
        assert e.ids == [s.id for s in data] and e.map.shape == (4, 4, 4)
        assert e.method == method and e.input_size == (32, 32)
        assert e.metadata["model_hash"] == state_dict_hash(model)
        recs = {r["id"]: r for r in res.records if r["method"] == method}
        assert e.targets.tolist() == [recs[i]["target"] for i in e.ids]
        assert e.probabilities.tolist() == pytest.approx([recs[i]["probability"] for i in e.ids])
    assert not (tmp_path / "maps" / ".parts").exists()
    # the counting map is the channel-0 brightness per patch: the map that was scored
    adapter = xvit.get_adapter(model)
    x = torch.stack([adapter.preprocessing(s.image) for s in data])
    expected = torch.nn.functional.adaptive_avg_pool2d(x[:, :1], (4, 4))[:, 0]
    assert torch.allclose(xvit.load_explanation(res.files["maps/counting"]).map, expected)
    # a third run has every map: nothing is explained again
    run_benchmark(
        model, data, methods=["random", counting], n=4, save_maps=True, progress=False, **common
    )
    assert counting.images == 6


def test_save_maps_needs_an_output_folder(model) -> None:
    with pytest.raises(xvit.ParameterError, match="save_maps needs out_dir"):
        run_benchmark(model, fake_dataset(1), methods="random", n=1, save_maps=True, progress=False)


def test_cli_save_maps_and_no_resume_moves_them_aside(bench_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*bench_args, "--methods", "random", "--metrics", "insertion", "--out", str(out)]
    result = CliRunner().invoke(bench_command, [*args, "--save-maps"])
    assert result.exit_code == 0, result.output
    assert xvit.load_explanation(out / "maps" / "random.safetensors").ids == [
        f"img-{i:03d}" for i in range(3)
    ]
    assert len(lines(out / "results.jsonl")) == 3 and (out / "manifest.json").exists()
    result = CliRunner().invoke(bench_command, [*args, "--no-resume"])
    assert result.exit_code == 0, result.output
    assert not (out / "maps").exists() and list(out.glob("maps-*/random.safetensors"))


@needs_gloo
@pytest.mark.slow
def test_two_ranks_save_the_maps_a_single_process_saves(tmp_path: Path) -> None:
    args = ["bench", "--model", "xvit:digits-vit", "--data", "digits", "-n", "4"]
    args += ["--methods", "random,rollout", "--metrics", "insertion", "--images-per-call", "1"]
    proc = _run(_torchrun(2, "-m", "xvit", *args, "--save-maps", "--out", str(tmp_path / "d")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from xvit.cli import main

    single = CliRunner().invoke(main, [*args, "--save-maps", "--out", str(tmp_path / "s")])
    assert single.exit_code == 0, single.output
    for method in ("random", "rollout"):
        two = xvit.load_explanation(tmp_path / "d" / "maps" / f"{method}.safetensors")
        one = xvit.load_explanation(tmp_path / "s" / "maps" / f"{method}.safetensors")
        assert two.ids == one.ids and len(two.ids) == 4
        assert torch.allclose(two.map, one.map, atol=1e-6)
        assert torch.equal(two.targets, one.targets)
    assert not (tmp_path / "d" / "maps" / ".parts").exists()
