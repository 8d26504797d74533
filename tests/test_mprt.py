"""MPRT (model-parameter randomisation): equal to Quantus 0.6's ``MPRT`` with matched settings,
its direction on the shipped digits model, clear errors, the model given left untouched."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.bench import run_benchmark
from xvit.data import get_dataset
from xvit.methods import get_method
from xvit.metrics import MPRT, get_metric
from xvit.metrics._base import saliency_at
from xvit.metrics.functional import mprt
from xvit.viz import plot_mprt

quantus = pytest.importorskip("quantus")


def _quantus_mprt(model, x, y, maps, method: str, similarity: str, seed: int) -> dict:
    """Quantus' MPRT on the same maps, re-explained by the same xvit method (nearest
    upsampling to the input, B x 1 x H x W, as xvit's MPRT compares them). The maps go in
    as float64, as xvit compares them: scikit-image's SSIM computes in the input's float
    type, and float32 moves it by about 1e-3."""
    from quantus.functions.similarity_func import correlation_spearman
    from quantus.functions.similarity_func import ssim as quantus_ssim

    explainer = get_method(method).create()
    size = tuple(x.shape[-2:])

    def explain_func(model, inputs, targets, **kwargs):
        maps = explainer.attribute(model, torch.as_tensor(inputs), torch.as_tensor(targets))
        return saliency_at(maps.detach(), size).unsqueeze(1).double().numpy()

    def ssim_2d(a, b, batched=False, **kwargs):
        # Quantus' MPRT hands its similarity flattened maps (B x H*W); its own ssim would then
        # run a 1-D SSIM along the raster order. xvit's SSIM compares the 2-D maps, as
        # Adebayo et al. do: matched by giving each pair back its H x W shape. (As an array:
        # Quantus' MPRT calls .tolist() on the result, which its batched ssim, a list, lacks.)
        pairs = zip(a, b)
        return np.array([quantus_ssim(aa.reshape(size), bb.reshape(size)) for aa, bb in pairs])

    metric = quantus.MPRT(
        similarity_func=correlation_spearman if similarity == "spearman" else ssim_2d,
        layer_order="top_down",
        seed=seed,
        abs=True,
        normalise=True,
        # xvit divides each map by its own peak; Quantus by default the whole batch by one
        normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
        disable_warnings=True,
    )
    with torch.random.fork_rng(devices=[]):  # Quantus seeds torch's global generator
        return metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=np.asarray(y),
            a_batch=saliency_at(maps, size).unsqueeze(1).double().numpy(),
            explain_func=explain_func,
            device="cpu",
        )


@pytest.mark.parametrize(("method", "similarity"), [("gae", "spearman"), ("rollout", "ssim")])
def test_equals_quantus_mprt_layer_by_layer(method: str, similarity: str) -> None:
    """layers="modules" is Quantus' top_down sequence with its seeding (seed + 1 before each
    reset_parameters), so both randomise the same weights and re-explain with the same maps."""
    model = MODEL_FACTORIES["timm-vit"]()
    x, y = model_input(model, batch=3), [0, 3, 4]
    maps = xvit.explain(method, model, x, target=y).map
    ours = MPRT(layers="modules", similarity=similarity, seed=42)(
        model, x, y, maps, explainer=method
    )
    theirs = _quantus_mprt(MODEL_FACTORIES["timm-vit"](), x, y, maps, method, similarity, 42)

    assert list(theirs)[1:] == list(ours.steps)  # "original" (unrandomised), then each layer
    assert ours.steps[:3] == ("head", "norm", "blocks.2.mlp.fc2")
    want = torch.tensor([theirs[step] for step in ours.steps], dtype=torch.float64).T
    assert ours.curves is not None
    torch.testing.assert_close(ours.curves, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.scores, want.mean(1), rtol=1e-4, atol=1e-6)
    assert float(want[:, -1].max()) < 0.9  # randomised layers do change the maps


def test_block_steps_come_from_the_adapter_and_seed_decides_the_weights() -> None:
    model = MODEL_FACTORIES["timm-vit-registers"]()
    x, y = model_input(model, batch=2), [1, 2]
    maps = xvit.explain("gae", model, x, target=y)
    metric = MPRT(reduce="last")
    assert metric.steps(model) == ["head", "block 2", "block 1", "block 0", "embeddings"]
    first = metric(model, x, y, maps, explainer="gae")
    again = metric(model, x, y, maps, explainer="gae")
    other = MPRT(reduce="last", seed=1)(model, x, y, maps, explainer="gae")
    assert first.curves is not None and other.curves is not None
    assert torch.equal(first.curves, again.curves) and first.steps == tuple(metric.steps(model))
    assert torch.equal(first.scores, first.curves[:, -1])
    assert not torch.equal(first.curves, other.curves)
    # HF ViT: the blocks are the adapter's (vit.encoder.layer), the head its classifier
    assert MPRT().steps(MODEL_FACTORIES["hf-vit"]()) == [
        "head",
        "block 2",
        "block 1",
        "block 0",
        "embeddings",
    ]


def test_user_model_and_global_generator_untouched() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    model.train()
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    x = model_input(model, batch=2)
    maps = torch.rand(2, 4, 4)
    before, rng = snapshot(model), torch.get_rng_state()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = mprt(model, x, [0, 1], maps, explainer="rollout", similarity="ssim")
    assert result.scores.shape == (2,) and torch.isfinite(result.scores).all()
    assert snapshot(model) == before
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_clear_errors() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x, maps = model_input(model, batch=1), torch.rand(1, 4, 4)
    with pytest.raises(xvit.ParameterError, match=r"explains again.*explainer="):
        MPRT()(model, x, [0], maps)
    with pytest.raises(xvit.ParameterError, match=r"xvit\.Explainer or a method name"):
        MPRT()(model, x, [0], maps, explainer=3)
    for bad in (
        {"similarity": "pearson"},
        {"layers": "heads"},
        {"reduce": "max"},
        {"absolute": 1},
        {"seed": -1},
    ):
        with pytest.raises(xvit.ParameterError, match=next(iter(bad))):
            MPRT(**bad)
    with pytest.raises(xvit.ParameterError, match="unknown parameter"):
        get_metric("mprt").create(order="bottom_up")


@pytest.mark.slow
def test_digits_maps_lose_similarity_and_random_has_none() -> None:
    """The acceptance check of issue 16 on the shipped model and held-out digits."""
    model = xvit.load_model("xvit:digits-vit")
    digits = get_dataset("digits", split="test", n=4)
    images, labels = [d.image for d in digits], [d.label for d in digits]
    report = {}
    for method in ("gradmask", "gae", "rollout"):
        e = xvit.explain(method, model, images, target=labels)
        r = MPRT()(model, e.inputs, e.targets, e, explainer=method)
        assert r.curves is not None
        curve = r.curves.mean(0)
        report[method] = [round(float(v), 3) for v in curve]
        assert curve[-1] < curve[0] - 0.3, (method, report[method])
        assert curve[-1] < 0.4 and float(r.scores.mean()) < 0.8, (method, report[method])
    # the random map: made with seed 0; re-drawn at every step it has no similarity from the
    # first step on; re-drawn with the seed that made it, it never changes (it ignores the
    # model, and MPRT flags exactly that)
    e = xvit.explain("random", model, images, target=labels, seed=0)
    fresh = MPRT(reseed=True)(model, e.inputs, e.targets, e, explainer="random", seeds=[0] * 4)
    same = MPRT()(model, e.inputs, e.targets, e, explainer="random", seeds=[0] * 4)
    assert fresh.curves is not None and same.curves is not None
    report["random (reseed)"] = [round(float(v), 3) for v in fresh.curves.mean(0)]
    report["random (same seed)"] = [round(float(v), 3) for v in same.curves.mean(0)]
    assert float(fresh.curves[:, 0].abs().mean()) < 0.2, report
    assert float(fresh.scores.abs().mean()) < 0.1, report
    assert torch.allclose(same.curves, torch.ones_like(same.curves)), report
    print("MPRT on digits, mean Spearman per step (head, block 5..0, embeddings):", report)


def test_bench_writes_the_mprt_figure_and_random_maps_keep_their_similarity(tmp_path) -> None:
    """In the benchmark a randomized method explains again with each image's own seed, the
    one that made its map: the random map ignores the model, so its similarity stays 1."""
    from PIL import Image

    model = MODEL_FACTORIES["timm-vit"]()
    data = [
        SimpleNamespace(
            image=Image.new("RGB", (32, 32), (40 * i, 90, 200 - 30 * i)),
            label=i,
            boxes=(),
            id=str(i),
        )
        for i in range(2)
    ]
    r = run_benchmark(
        model, data, methods="rollout,random", metrics="mprt", n=2, out_dir=tmp_path, progress=False
    )
    assert r.files["mprt"] == tmp_path / "mprt.png" and r.files["mprt"].is_file()
    random = next(s for s in r.summaries if s.method == "random")
    assert random.curves["mprt"] == [1.0] * len(MPRT().steps(model))
    assert "mprt ↓" in r.table and "mprt: mean Spearman similarity" in r.table
    fig = plot_mprt(r, MPRT().steps(model))
    assert fig.axes[0].get_xticklabels()[0].get_text() == "head"
    with pytest.raises(xvit.ParameterError, match="no mprt curve with 2 steps"):
        plot_mprt(r, ["head", "embeddings"])
