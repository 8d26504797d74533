"""Integrated Gradients and SmoothGrad (issue 17) against Captum 0.9, the peer library, with
matched parameters and the same noise, at pixel level and after pooling to the patch grid,
on the shipped digits ViT and a random tiny timm ViT.

Pooling is written again here (channel and patch sums by slicing) rather than imported, so
the pooled comparison checks xvit's pooling too. Captum's attributions are the reference:
equal to rtol 1e-4, with an absolute floor of 1e-5 of the largest value, as signed sums of
attributions cancel near zero.
"""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
from captum.attr import InputXGradient, NoiseTunnel, Saliency
from captum.attr import IntegratedGradients as CaptumIG
from PIL import Image
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, _copies, model_input
from model_state import snapshot
from xvit._seeds import content_seed, generator
from xvit.methods.integrated_gradients import RULES, IntegratedGradients
from xvit.methods.smoothgrad import NoiseStream, SmoothGrad

MODELS = {
    "digits-vit": _copies(lambda: xvit.load_model("xvit:digits-vit")),
    "timm-vit": MODEL_FACTORIES["timm-vit"],
}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    return MODELS[request.param]()


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    floor = 1e-5 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=floor)


def patch_sums(attr: torch.Tensor, patch: tuple[int, int], absolute: bool) -> torch.Tensor:
    """B x C x H x W -> B x h x w: each patch's sum over its pixels and channels."""
    values = attr.abs() if absolute else attr
    ph, pw = patch
    h, w = attr.shape[-2] // ph, attr.shape[-1] // pw
    out = torch.zeros(attr.shape[0], h, w, dtype=attr.dtype)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = values[:, :, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw].sum((1, 2, 3))
    return out


def inputs_and_targets(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = model_input(model, batch=2, seed=3)
    return x, torch.tensor([3, 1])


# --- Integrated Gradients -----------------------------------------------------------------
@pytest.mark.parametrize("rule", [r for r in RULES if r != "riemann_trapezoid"])
def test_integrated_gradients_equals_captum(model: nn.Module, rule: str) -> None:
    """Same baseline (the preprocessed black image), steps and rule; the 2 x 6 points on the
    paths go through the model 5 at a time, so chunks straddle images."""
    adapter = xvit.get_adapter(model)
    x, t = inputs_and_targets(model)
    ig = IntegratedGradients(n_steps=6, rule=rule, batch_size=5)
    black = ig.baseline_input(adapter, x).expand_as(x)
    want = CaptumIG(model).attribute(x, baselines=black, target=t, n_steps=6, method=rule)

    close(ig.pixel_attributions(adapter, x, t), want)
    # pooled: signed (the default) for every rule, absolute values for one
    pooling = "abs" if rule == "gausslegendre" else "signed"
    got = xvit.explain(
        "integrated_gradients", model, x, target=t, n_steps=6, rule=rule, pooling=pooling
    ).map
    close(got, patch_sums(want, adapter.geometry.patch_size, absolute=pooling == "abs"))


def test_integrated_gradients_trapezoid_is_the_authors_rule(model: nn.Module) -> None:
    """The default rule is the authors' code (ankurtaly/Integrated-Gradients): gradients at
    the baseline + i / s (input - baseline), i = 0 .. s, averaged pairwise (the trapezoid),
    times input - baseline; written again here with s = 5 (n_steps = 6 points). Captum's
    ``riemann_trapezoid`` weights sum to 1 - 1 / n, so it gives (n - 1) / n of that."""
    adapter = xvit.get_adapter(model)
    x, t = inputs_and_targets(model)
    ig = IntegratedGradients(n_steps=6, batch_size=4)
    black = ig.baseline_input(adapter, x).expand_as(x)
    s = 5
    grads = []
    for i in range(s + 1):
        point = (black + (i / s) * (x - black)).requires_grad_(True)
        score = model(point).gather(1, t[:, None]).sum()
        grads.append(torch.autograd.grad(score, point)[0])
    pairs = torch.stack([(grads[i] + grads[i + 1]) / 2 for i in range(s)])
    authors = (x - black) * pairs.mean(0)
    captum = CaptumIG(model).attribute(
        x, baselines=black, target=t, n_steps=6, method="riemann_trapezoid"
    )

    got = ig.pixel_attributions(adapter, x, t)
    close(got, authors)
    close(got * 5 / 6, captum)


def test_the_black_baseline_is_the_preprocessed_black_image(model: nn.Module) -> None:
    adapter = xvit.get_adapter(model)
    x = model_input(model)
    prep = adapter.preprocessing
    black = prep(Image.new("RGB", (prep.size[1], prep.size[0])))  # PIL sizes are (W, H)
    got = IntegratedGradients().baseline_input(adapter, x).expand_as(x)
    torch.testing.assert_close(got, black.expand_as(x))
    assert float(IntegratedGradients(baseline="zero").baseline_input(adapter, x)) == 0.0


def test_integrated_gradients_is_complete(model: nn.Module) -> None:
    """Completeness (the paper's axiom): the patch scores sum to F(x) - F(baseline)."""
    x, t = inputs_and_targets(model)
    ig = IntegratedGradients(n_steps=32, rule="gausslegendre", baseline="zero")
    maps = ig.attribute(model, x, t)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(maps.sum((1, 2)), gap, rtol=2e-2, atol=2e-2 * float(gap.abs().max()))


def test_integrated_gradients_refuses_a_trapezoid_of_one_point(model: nn.Module) -> None:
    with pytest.raises(xvit.ParameterError, match="n_steps >= 2"):
        xvit.explain("integrated_gradients", model, model_input(model), n_steps=1)
    with pytest.raises(xvit.ParameterError, match="rule must be one of"):
        IntegratedGradients(rule="simpson")
    one = xvit.explain(
        "integrated_gradients", model, model_input(model), n_steps=1, rule="riemann_right"
    )
    assert torch.isfinite(one.map).all()


# --- SmoothGrad ---------------------------------------------------------------------------
def captum_smoothgrad(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, n: int, *, squared: bool, times_input: bool
) -> torch.Tensor:
    """Captum's NoiseTunnel, one image at a time, each drawing its noise from torch's global
    generator seeded with xvit's seed of that image (``content_seed(0, its values)``):
    xvit draws the same ``torch.normal(0, full(sigma))`` from its own generator seeded so,
    hence both see the same noise. sigma = 15 % of the image's value range (the paper)."""
    inner = InputXGradient(model) if times_input else Saliency(model)
    kind = "smoothgrad_sq" if squared else "smoothgrad"
    extra = {} if times_input else {"abs": False}
    out = []
    for image, target in zip(x, t.tolist()):
        sigma = float(0.15 * (image.max() - image.min()))
        torch.manual_seed(content_seed(0, image.float().contiguous().numpy().tobytes()))
        out.append(
            NoiseTunnel(inner).attribute(
                image[None], nt_type=kind, nt_samples=n, stdevs=sigma, target=target, **extra
            )
        )
    return torch.cat(out)


@pytest.mark.parametrize(("squared", "times_input"), [(False, False), (True, False), (False, True)])
def test_smoothgrad_equals_captum(model: nn.Module, squared: bool, times_input: bool) -> None:
    adapter = xvit.get_adapter(model)
    x, t = inputs_and_targets(model)
    params = dict(n_samples=5, squared=squared, times_input=times_input, batch_size=3)
    before = torch.get_rng_state()
    want = captum_smoothgrad(model, x, t, 5, squared=squared, times_input=times_input)
    torch.set_rng_state(before)

    sg = SmoothGrad(**params)
    close(sg.pixel_attributions(adapter, x, t), want)
    assert torch.equal(torch.get_rng_state(), before), "a seeded call drew from torch's generator"
    # pooled: absolute values (the default) for the paper's SmoothGrad, signed for the others
    pooling = "signed" if squared or times_input else "abs"
    got = xvit.explain("smoothgrad", model, x, target=t, pooling=pooling, **params).map
    close(got, patch_sums(want, adapter.geometry.patch_size, absolute=pooling == "abs"))


def test_smoothgrad_does_not_depend_on_batching(model: nn.Module) -> None:
    x = model_input(model, batch=3, seed=5)
    t = torch.tensor([0, 2, 4])
    whole = SmoothGrad(n_samples=3, batch_size=64).attribute(model, x, t)
    chunked = SmoothGrad(n_samples=3, batch_size=2).attribute(model, x, t)
    alone = SmoothGrad(n_samples=3, batch_size=1).attribute(model, x[2:], t[2:])
    close(chunked, whole)
    close(alone[0], whole[2])
    other_seed = SmoothGrad(n_samples=3, seed=1).attribute(model, x, t)
    assert not torch.allclose(other_seed, whole)


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 5, 5), (2, 3, 3), (1, 1, 1), (1, 1, 3)])
@pytest.mark.parametrize("n_samples", [1, 15, 17, 50])
@pytest.mark.parametrize("block", [1, 3, 64])
def test_noise_drawn_in_blocks_equals_one_draw(shape: tuple, n_samples: int, block: int) -> None:
    # the lazy blocks (memory flat in n_samples) must continue one draw exactly, so that the
    # maps still equal Captum's, for any image size (values per image not a multiple of 16,
    # a last block shorter than 16 values)
    image = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    gen = generator(content_seed(3, image.numpy().tobytes()))
    whole = torch.normal(0.0, torch.full((n_samples, *shape), 0.4), generator=gen)
    stream = NoiseStream(image, 0.4, 3, n_samples, block)
    got = [stream.take(list(range(s, min(s + 4, n_samples)))) for s in range(0, n_samples, 4)]
    assert torch.equal(torch.cat(got), whole)


def test_noise_stream_refuses_a_dropped_sample() -> None:
    stream = NoiseStream(torch.zeros(3, 8, 8), 0.4, 3, n_samples=50, block=4)
    stream.take([0, 1, 9])
    with pytest.raises(RuntimeError, match="already dropped"):
        stream.take([2])


def test_smoothgrad_noise_memory_does_not_grow_with_samples(model: nn.Module) -> None:
    # SmoothGrad keeps one block of noise per image of the current pass, not n_samples
    x = model_input(model, batch=1, seed=2)
    drawn: list[int] = []
    original = NoiseStream._draw

    def spy(self: NoiseStream, start: int) -> torch.Tensor:
        out = original(self, start)
        drawn.append(len(out))
        return out

    with patch.object(NoiseStream, "_draw", spy):
        SmoothGrad(n_samples=40, batch_size=8).attribute(model, x, torch.tensor([1]))
    assert sum(drawn) == 40 and max(drawn) <= 16, drawn


def test_seed_none_draws_from_torchs_generator(model: nn.Module) -> None:
    x = model_input(model)
    t = torch.tensor([1, 2])
    torch.manual_seed(7)
    a = SmoothGrad(n_samples=3, seed=None).attribute(model, x, t)
    torch.manual_seed(7)
    b = SmoothGrad(n_samples=3, seed=None).attribute(model, x, t)
    assert torch.equal(a, b)


def test_pixel_methods_leave_the_model_untouched() -> None:
    model = MODEL_FACTORIES["timm-vit"]().train()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    model.blocks[0].norm1.weight.requires_grad_(False)
    before = snapshot(model)
    for method, params in [
        ("integrated_gradients", {"n_steps": 3}),
        ("smoothgrad", {"n_samples": 3}),
    ]:
        xvit.explain(method, model, model_input(model), **params)
        assert snapshot(model) == before
