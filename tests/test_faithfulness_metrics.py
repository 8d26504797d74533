"""ROAD, faithfulness correlation, infidelity and max-sensitivity against their peers.

Each metric is checked against Quantus 0.6 or Captum with the same parameters and the same
random draws: the test hands the peer xvit's draws (its noise, subsets, perturbations),
through the peer's own hook where it has one (Captum's ``perturb_func``) and by replacing
the numpy function the peer draws from where it has none (Quantus).
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import xvit
from conftest import DEPTH, HEADS, HIDDEN, MODEL_FACTORIES, NUM_CLASSES, model_input
from xvit.metrics import ROAD, FaithfulnessCorrelation, Infidelity, SensitivityMax, get_metric
from xvit.metrics.faithfulness_correlation import random_subsets
from xvit.metrics.functional import faithfulness_correlation, infidelity, road, sensitivity_max
from xvit.metrics.infidelity import gaussian_perturbations
from xvit.metrics.road import QUANTUS_PERCENTAGES, imputation_noise, linear_imputation
from xvit.metrics.sensitivity_max import uniform_perturbations

quantus = pytest.importorskip("quantus")
captum_metrics = pytest.importorskip("captum.metrics")

SEEDS = (11, 12, 13)


def avgpool_vit(in_chans: int = 3) -> torch.nn.Module:
    """A tiny timm ViT that pools the patch tokens: unlike the class-token models at random
    initialisation its prediction changes with the image, so accuracy curves are not flat."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=NUM_CLASSES,
        embed_dim=HIDDEN,
        depth=DEPTH,
        num_heads=HEADS,
        img_size=32,
        patch_size=8,
        in_chans=in_chans,
        global_pool="avg",
        class_token=False,
        fc_norm=True,
    ).eval()


def pixel_maps(batch: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    """Maps at input resolution without ties (so any sort gives one order)."""
    return torch.rand(batch, size, size, generator=torch.Generator().manual_seed(seed))


def recorded_inputs(model: torch.nn.Module, call) -> list[torch.Tensor]:
    """The batches that reach the model's patch embedding while ``call()`` runs."""
    seen: list[torch.Tensor] = []
    handle = model.patch_embed.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone())
    )
    try:
        call()
    finally:
        handle.remove()
    return seen


# --- ROAD -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 37, 300, 767])
def test_linear_imputation_equals_quantus(k: int) -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(k)
    image = rng.standard_normal((3, 24, 32)).astype(np.float32)
    pixels = rng.permutation(24 * 32)[:k]
    theirs = noisy_linear_imputation(image, pixels, noise=0.0).reshape(3, -1)[:, pixels]
    np.testing.assert_allclose(linear_imputation(image, pixels), theirs, rtol=1e-4, atol=1e-6)
    # the imputed values are not the image's own values (the test can fail)
    assert not np.allclose(theirs, image.reshape(3, -1)[:, pixels], atol=1e-2)


def quantus_noise(monkeypatch: pytest.MonkeyPatch, draws: list[np.ndarray]) -> None:
    """Make numpy's ``randn`` (Quantus' noise) return ``draws`` in turn, checking sizes
    (on one channel Quantus' solution, and so its noise, is a vector)."""
    queue = list(draws)

    def randn(*shape: int) -> np.ndarray:
        draw = queue.pop(0)
        assert draw.size == np.prod(shape)
        return draw.reshape(shape)

    monkeypatch.setattr(np.random, "randn", randn)


#: Curve points of the comparisons (Quantus' 50 default points cost it half a minute here).
PERCENTAGES = (1.0, 9.0, 37.0, 63.0, 99.0)


def test_road_defaults_are_quantus_defaults() -> None:
    metric = quantus.ROAD(disable_warnings=True)
    assert list(QUANTUS_PERCENTAGES) == metric.percentages == list(ROAD().percentages)
    assert ROAD().noise == metric.perturb_func.keywords["noise"] == 0.01


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_road_equals_quantus_road(noise: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantus' ROAD ranks the map broadcast over the channels, which only works on
    one-channel images: compared on a one-channel ViT, with the same noise draws, the
    imputed images the model sees compared too."""
    model = avgpool_vit(in_chans=1)
    x = model_input(model, batch=3)
    maps = pixel_maps(3)
    y = model(x).argmax(1)
    counts = [int(32 * 32 * p / 100) for p in PERCENTAGES]
    quantus_noise(
        monkeypatch,
        [
            imputation_noise(SEEDS[i], 1, k, j).numpy()
            for j, k in enumerate(counts)
            for i in range(3)
        ],
    )
    metric = quantus.ROAD(
        percentages=list(PERCENTAGES), noise=noise, normalise=False, disable_warnings=True
    )
    theirs: dict = {}
    seen_q = recorded_inputs(
        model,
        lambda: theirs.update(metric(model, x.numpy(), y.numpy(), maps.numpy(), device="cpu")),
    )
    result: list = []
    seen_x = recorded_inputs(
        model,
        lambda: result.append(
            ROAD(percentages=PERCENTAGES, noise=noise)(model, x, y, maps, seeds=SEEDS)
        ),
    )
    mine = result[0]
    # Quantus scores percentage by percentage, xvit image by image
    q_inputs = torch.stack([torch.as_tensor(b) for b in seen_q], dim=1)  # B x S x ...
    x_inputs = torch.cat(seen_x).view(3, len(counts), 1, 32, 32)
    torch.testing.assert_close(x_inputs, q_inputs.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mine.curves.mean(0), torch.tensor(list(theirs.values())).double())
    assert mine.scores.shape == (3,) and 0 < mine.scores.mean() < 1  # not a flat curve
    assert torch.equal(mine.fractions, torch.tensor(PERCENTAGES).double() / 100)


def test_road_lerf_is_quantus_road_on_the_reversed_map() -> None:
    model = avgpool_vit(in_chans=1)
    x = model_input(model, batch=2)
    maps = pixel_maps(2)
    y = model(x).argmax(1)
    metric = quantus.ROAD(
        percentages=list(PERCENTAGES), noise=0.0, normalise=False, disable_warnings=True
    )
    # 1 - map reverses the order exactly (Quantus refuses an all-negative map)
    theirs = metric(model, x.numpy(), y.numpy(), (1 - maps).numpy(), device="cpu")
    lerf = ROAD(percentages=PERCENTAGES, order="lerf", noise=0.0)
    mine = lerf(model, x, y, maps)
    torch.testing.assert_close(mine.curves.mean(0), torch.tensor(list(theirs.values())).double())
    assert lerf.higher_is_better and not ROAD().higher_is_better


def test_road_on_colour_images_and_patch_maps_stable_ties() -> None:
    """On a three-channel model with 4 x 4 patch maps (ties within each patch): with
    ``ties="stable"`` the pixels of a patch go in row-major order, so the first k removed
    pixels are exactly those a stable sort of the upsampled map gives."""
    model = avgpool_vit()
    x = model_input(model, batch=2)
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    metric = ROAD(percentages=(25.0, 50.0), ties="stable", noise=0.0)
    up = maps.repeat_interleave(8, 1).repeat_interleave(8, 2).flatten(1)
    expected = torch.argsort(-up, dim=1, stable=True)
    assert np.array_equal(metric.ranking(up.view(2, 32, 32)), expected.numpy())
    seen = recorded_inputs(model, lambda: metric(model, x, None, maps))
    first = seen[-1][0].flatten(1)  # image 0 at 25 %: the 256 top pixels changed, no other
    changed = (first != x[0].flatten(1)).any(0)
    assert set(changed.nonzero().flatten().tolist()) <= set(expected[0, :256].tolist())
    assert changed.sum() > 200


# --- faithfulness correlation -----------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["black", "mean", 0.5])
def test_faithfulness_correlation_equals_quantus(
    baseline: str | float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quantus draws subsets of C x H x W values; handed subsets made of whole pixels (the
    C values of each of xvit's pixels) it gives xvit's scores."""
    model = avgpool_vit()
    x = model_input(model, batch=3)
    maps = pixel_maps(3)
    y = model(x).argmax(1)
    runs, k, n = 12, 40, 32 * 32
    subsets = [random_subsets(s, n, k, runs) for s in SEEDS]
    queue = [
        np.concatenate([c * n + subsets[i][r].numpy() for c in range(3)])
        for r in range(runs)
        for i in range(3)
    ]

    def choice(population: int, size: int, replace: bool = True) -> np.ndarray:
        assert (population, size, replace) == (3 * n, 3 * k, False)
        return queue.pop(0)

    monkeypatch.setattr(np.random, "choice", choice)
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=runs,
        subset_size=3 * k,
        perturb_baseline=baseline,
        return_aggregate=False,
        disable_warnings=True,
    )
    theirs = metric(model, x.numpy(), y.numpy(), maps.numpy(), device="cpu")
    mine = FaithfulnessCorrelation(nr_runs=runs, subset_size=k, perturb_baseline=baseline)(
        model, x, y, maps, seeds=SEEDS
    )
    torch.testing.assert_close(mine.scores, torch.tensor(theirs).double(), rtol=1e-4, atol=1e-6)
    assert not queue and mine.scores.abs().max() > 0.05


def test_faithfulness_correlation_subset_must_fit() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    with pytest.raises(xvit.ParameterError, match="subset_size=2000 must be smaller"):
        faithfulness_correlation(model, model_input(model), None, pixel_maps(2), subset_size=2000)


# --- infidelity --------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_equals_captum(normalize: bool) -> None:
    model = avgpool_vit().double()  # float64 on both sides: Captum's normalised form cancels
    x = model_input(model, batch=3).double()
    maps = pixel_maps(3).double()
    y = model(x).argmax(1)
    n, std = 6, 0.3
    draws = torch.cat([gaussian_perturbations(s, (3, 32, 32), n, std) for s in SEEDS]).double()

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert inputs.shape[0] == draws.shape[0]  # every image's n samples, image by image
        return draws, inputs - draws

    theirs = captum_metrics.infidelity(
        model,
        perturb,
        x,
        maps.unsqueeze(1).expand_as(x),
        target=y,
        n_perturb_samples=n,
        normalize=normalize,
    )
    metric = Infidelity(n_perturb_samples=n, noise_std=std, normalize=normalize)
    mine = metric(model, x, y, maps, seeds=SEEDS)
    torch.testing.assert_close(mine.scores, theirs.double(), rtol=1e-4, atol=1e-9)
    assert (mine.scores > 0).all()


def test_normalized_infidelity_ignores_the_scale_of_the_map() -> None:
    model = avgpool_vit()
    x = model_input(model, batch=2)
    maps = pixel_maps(2)
    a = infidelity(model, x, None, maps, n_perturb_samples=5)
    b = infidelity(model, x, None, 7.0 * maps, n_perturb_samples=5)
    c = infidelity(model, x, None, 7.0 * maps, n_perturb_samples=5, normalize=False)
    torch.testing.assert_close(a.scores, b.scores)
    assert not torch.allclose(b.scores, c.scores)


# --- max-sensitivity --------------------------------------------------------------------------
def upsampled(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="nearest").squeeze(1)


def test_sensitivity_max_equals_captum_and_quantus(monkeypatch: pytest.MonkeyPatch) -> None:
    model = avgpool_vit()
    x = model_input(model, batch=3)
    y = model(x).argmax(1)
    explainer = xvit.make_explainer("gradcam")

    def explain(inputs: torch.Tensor | tuple, target: torch.Tensor) -> torch.Tensor:
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs  # Captum passes a tuple
        return upsampled(explainer.attribute(model, inputs, target), (32, 32))

    maps = explain(x, y)
    n, radius = 3, 0.1
    draws = torch.stack([uniform_perturbations(s, (3, 32, 32), n, radius) for s in SEEDS])
    metric = SensitivityMax(n_perturb_samples=n, perturb_radius=radius, batch_size=5)
    mine = metric(model, x, y, maps, seeds=SEEDS, explainer=explainer)

    def perturb(inputs: torch.Tensor, r: float) -> torch.Tensor:
        assert r == radius and inputs.shape[0] == 3 * n
        return inputs + draws.flatten(0, 1)

    theirs = captum_metrics.sensitivity_max(
        lambda inputs, target: (explain(inputs, target),),  # Captum wants a tuple of maps
        x,
        perturb_func=perturb,
        perturb_radius=radius,
        n_perturb_samples=n,
        target=y,
    )
    torch.testing.assert_close(mine.scores, theirs.double(), rtol=1e-4, atol=1e-7)
    assert (mine.scores > 0).all()

    # Quantus' MaxSensitivity: the same draws through numpy's uniform, one sample per step
    steps = [draws[:, j].flatten(1).numpy() for j in range(n)]

    def uniform(low: float, high: float, size: tuple[int, ...]) -> np.ndarray:
        assert (low, high, size) == (-radius, radius, (3, 3 * 32 * 32))
        return steps.pop(0)

    monkeypatch.setattr(np.random, "uniform", uniform)

    def quantus_explain(model, inputs, targets, **_kw):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    quantus_scores = quantus.MaxSensitivity(
        nr_samples=n,
        lower_bound=radius,
        normalise=False,
        return_nan_when_prediction_changes=False,
        disable_warnings=True,
    )(
        model,
        x.numpy(),
        y.numpy(),
        maps.unsqueeze(1).numpy(),
        explain_func=quantus_explain,
        device="cpu",
    )
    torch.testing.assert_close(
        mine.scores, torch.tensor(quantus_scores).double(), rtol=1e-4, atol=1e-7
    )


def test_sensitivity_max_needs_the_method() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model)
    with pytest.raises(xvit.ParameterError, match="pass the method that made the maps"):
        SensitivityMax()(model, x, None, pixel_maps(2))
    r = sensitivity_max(model, x, None, pixel_maps(2), explainer="rollout", n_perturb_samples=2)
    assert r.scores.shape == (2,)


# --- every metric here: seeds per image, batching, functional twins ---------------------------
CASES = {
    "road": (road, {"percentages": (20, 60, 90), "noise": 0.2}),
    "faithfulness_correlation": (faithfulness_correlation, {"nr_runs": 6, "subset_size": 64}),
    "infidelity": (infidelity, {"n_perturb_samples": 4}),
    "sensitivity_max": (sensitivity_max, {"n_perturb_samples": 3, "explainer": "gradcam"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_scores_do_not_depend_on_batching(name: str) -> None:
    """Four images scored together, or two by two, or the class and its functional twin:
    the same scores (each image draws from its own seed); other seeds give other scores."""
    func, params = CASES[name]
    cls = get_metric(name)
    model = avgpool_vit()
    x = model_input(model, batch=4)
    maps = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(3))
    seeds = [5, 6, 7, 8]
    whole = func(model, x, None, maps, seeds=seeds, **params).scores
    halves = torch.cat(
        [
            func(model, x[s], None, maps[s], seeds=seeds[s], **params).scores
            for s in (slice(0, 2), slice(2, 4))
        ]
    )
    torch.testing.assert_close(whole, halves, rtol=1e-6, atol=1e-9)
    explainer = params.get("explainer")
    kwargs = {k: v for k, v in params.items() if k != "explainer"}
    as_class = cls(**kwargs)(model, x, None, maps, seeds=seeds, explainer=explainer).scores
    torch.testing.assert_close(as_class, whole)
    # other seeds: other perturbed inputs (ROAD's 0/1 curves may not show it)
    first = recorded_inputs(model, lambda: func(model, x, None, maps, seeds=seeds, **params))
    other = recorded_inputs(model, lambda: func(model, x, None, maps, seeds=[1, 2, 3, 4], **params))
    assert not torch.equal(torch.cat(first), torch.cat(other))
    assert cls.expensive and cls.cost


def test_directions_and_parameter_errors() -> None:
    assert not ROAD.higher_is_better and FaithfulnessCorrelation.higher_is_better
    assert not Infidelity.higher_is_better and not SensitivityMax.higher_is_better
    assert SensitivityMax.needs_explainer and not Infidelity.needs_explainer
    with pytest.raises(xvit.ParameterError, match="percentages must be strictly increasing"):
        ROAD(percentages=(50, 10))
    with pytest.raises(xvit.ParameterError, match="percentages"):
        ROAD(percentages=(10, 100))
    with pytest.raises(xvit.ParameterError, match="order must be one of"):
        ROAD(order="most")
    with pytest.raises(xvit.ParameterError, match="perturb_baseline"):
        FaithfulnessCorrelation(perturb_baseline="grey")
