"""The cheap metrics of issue 16 against their peers.

- Sparseness and Complexity: Quantus 0.6's ``Sparseness`` and ``Complexity`` (defaults:
  normalised by the maximum, absolute values), image by image, at input resolution.
- Average Drop / Increase in Confidence: pytorch-grad-cam's ``DropInConfidence`` and
  ``IncreaseInConfidence`` with softmax targets, on maps it scales itself.
- Token perturbation: no library has it; ``chefer_reference`` below re-writes the authors'
  ``generate_visualizations.py`` (bilinear upsampling, min-max scaling) and
  ``pertubation_eval_from_hdf5.py`` (``torch.topk`` per step, black pixels in [0, 1] space,
  top-1 hits against the label) and the AUC of the script that accompanies their numbers
  (unperturbed image at 0 %, accuracy 0 at 100 %, trapezoids of width 0.1).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xvit
from conftest import MODEL_FACTORIES
from xvit.data import get_dataset
from xvit.metrics import (
    AverageDrop,
    Complexity,
    IncreaseInConfidence,
    Sparseness,
    TokenPerturbation,
    get_metric,
)
from xvit.metrics.functional import (
    average_drop,
    complexity,
    increase_in_confidence,
    sparseness,
    token_perturbation,
)

quantus = pytest.importorskip("quantus")
gradcam_metrics = pytest.importorskip("pytorch_grad_cam.metrics.cam_mult_image")
gradcam_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
gradcam_image = pytest.importorskip("pytorch_grad_cam.utils.image")


def _maps(seed: int = 0) -> torch.Tensor:
    """Five 4 x 4 patch maps: signed noise, a one-hot, ties, a constant and a zero map."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(5, 4, 4, generator=g)
    maps[1] = 0.0
    maps[1, 2, 3] = -4.0  # one (negative) patch holds everything
    maps[2] = torch.tensor([0.0, 1.0, 1.0, 2.0]).repeat(4, 1)
    maps[3] = 0.5
    maps[4] = 0.0
    return maps


def _quantus(metric: type, maps: np.ndarray) -> list[float]:
    """Quantus' scores of float32 maps at input resolution, one image per call (Quantus
    normalises by the maximum over the batch; xvit per image)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a in maps:
            x = np.zeros((1, 3, *a.shape), dtype=np.float32)
            got = metric(disable_warnings=True)(
                model=None, x_batch=x, y_batch=np.zeros(1, dtype=int), a_batch=a[None].copy()
            )
            out.append(float(got[0]))
    return out


# --- sparseness and complexity -------------------------------------------------------------
@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_gini_and_entropy_equal_quantus_at_input_resolution(name: str) -> None:
    peer = {"sparseness": quantus.Sparseness, "complexity": quantus.Complexity}[name]
    patch_maps = _maps()
    pixel_maps = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 1e-3
    metric = get_metric(name)()
    for maps in (patch_maps[:3], pixel_maps, -patch_maps[:3]):  # Quantus refuses flat maps
        up = F.interpolate(maps[:, None], size=(32, 32), mode="nearest")[:, 0]
        want = torch.tensor(_quantus(peer, up.numpy()), dtype=torch.float64)
        got = metric(None, torch.zeros(len(maps), 3, 32, 32), None, maps).scores
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # flat maps: no concentration at all; a zero map has no distribution (NaN entropy)
    flat = metric(None, torch.zeros(2, 3, 32, 32), None, patch_maps[3:]).scores
    want_flat = [0.0, 0.0] if name == "sparseness" else [math.log(1024), math.nan]
    torch.testing.assert_close(flat, torch.tensor(want_flat, dtype=torch.float64), equal_nan=True)


def test_gini_is_the_same_on_the_grid_and_entropy_gains_log_pixels_per_patch() -> None:
    maps = _maps()[:4]  # the zero map has no entropy
    at_grid_gini, at_input_gini = sparseness(maps), sparseness(maps, size=(32, 32))
    torch.testing.assert_close(at_input_gini, at_grid_gini, rtol=1e-9, atol=1e-12)
    shift = complexity(maps, size=(32, 32)) - complexity(maps)
    torch.testing.assert_close(shift, torch.full((4,), math.log(64.0), dtype=torch.float64))
    # analytic values: one patch of 16 holding everything, and a uniform map
    assert float(at_grid_gini[1]) == pytest.approx(15 / 16, abs=1e-5)
    assert float(at_grid_gini[3]) == pytest.approx(0.0, abs=1e-12)
    assert float(complexity(maps)[3]) == pytest.approx(math.log(16))
    assert Sparseness.higher_is_better and not Complexity.higher_is_better
    assert not Sparseness.expensive and not Complexity.expensive
    assert Sparseness.cost and Complexity.cost


# --- average drop and increase in confidence ------------------------------------------------
def _gradcam_peer(model, x, targets, maps_at_input):
    """pytorch-grad-cam's drop (``max(0, Y - O)``) and increase (``O > Y``) with softmax
    targets, on maps scaled by its own ``scale_cam_image``; and ``Y``."""
    cams = gradcam_image.scale_cam_image(maps_at_input.numpy())
    wanted = [gradcam_targets.ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    drop = gradcam_metrics.DropInConfidence()(x, cams, wanted, model)
    rise = gradcam_metrics.IncreaseInConfidence()(x, cams, wanted, model)
    with torch.no_grad():
        y = model(x).softmax(-1)[torch.arange(len(x)), torch.as_tensor(targets)]
    return torch.from_numpy(drop).double(), torch.from_numpy(rise).double(), y.double()


@pytest.fixture(scope="module")
def digits():
    """The shipped digits model, 6 held-out digits, their labels and rollout maps (8 x 8),
    rounded to one decimal after min-max scaling so that many patches tie, as GradMask's do."""
    model = xvit.load_model("xvit:digits-vit")
    samples = get_dataset("digits", split="test", n=6)
    images, labels = [s.image for s in samples], [s.label for s in samples]
    e = xvit.explain("rollout", model, images, target=labels)
    assert e.inputs is not None
    return model, e.inputs, labels, (e.normalized() * 10).round() / 10


def test_average_drop_and_increase_equal_pytorch_grad_cam(digits) -> None:
    g = torch.Generator().manual_seed(3)
    tiny_x, tiny_maps = torch.randn(6, 3, 32, 32, generator=g), torch.rand(6, 4, 4, generator=g)
    model, x, labels, maps = digits
    cases = [
        (MODEL_FACTORIES["timm-vit"](), tiny_x, [0, 1, 2, 3, 4, 0], tiny_maps),
        (model, x, labels, maps),
    ]
    for model, x, labels, maps in cases:
        size = tuple(x.shape[-2:])
        at_input = F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0]
        drop, rise, y = _gradcam_peer(model, x, labels, at_input)
        ours = AverageDrop(batch_size=5)(model, x, labels, maps).scores
        torch.testing.assert_close(ours * y, drop, rtol=1e-4, atol=1e-6)
        got = IncreaseInConfidence(batch_size=5)(model, x, labels, maps).scores
        torch.testing.assert_close(got, rise)
        assert ((ours >= 0) & (ours <= 1)).all()
    # the functional twins give the classes' scores; a constant map is NaN
    flat = torch.ones(2, 8, 8)
    assert average_drop(model, x[:2], labels[:2], flat).scores.isnan().all()
    assert increase_in_confidence(model, x[:2], labels[:2], flat).scores.isnan().all()
    assert not AverageDrop.higher_is_better and IncreaseInConfidence.higher_is_better


# --- token perturbation ----------------------------------------------------------------------
STEPS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def chefer_reference(model, pixels, mean, std, patch_maps, labels, patch, negative, mode):
    """Per-image AUCs as the authors' code computes them: each patch map upsampled by the
    patch size (``mode``; theirs is bilinear) and min-max scaled (their
    ``generate_visualizations.py``, one image per batch), negated for the negative order;
    then, batched as ``pertubation_eval_from_hdf5.py``, ``int(H * W * step)`` pixels chosen
    by ``torch.topk`` set to 0 in [0, 1] space and a hit when the top-1 class is the label;
    finally the trapezoids of width 0.1 over 0 %, 10 % .. 90 %, 100 % (accuracy 0)."""
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)

    def normalize(t):
        return (t - mean_t) / std_t

    res = F.interpolate(patch_maps[:, None].float(), scale_factor=patch, mode=mode)
    low = res.amin(dim=(1, 2, 3), keepdim=True)
    res = (res - low) / (res.amax(dim=(1, 2, 3), keepdim=True) - low)
    data, target = pixels.clone(), torch.as_tensor(labels)
    org_shape = data.shape
    vis = (-res if negative else res).reshape(org_shape[0], -1)
    base_size = org_shape[-1] * org_shape[-2]
    states = [data.clone()]
    for step in STEPS:
        _, idx = torch.topk(vis, int(base_size * step), dim=-1)
        idx = idx.unsqueeze(1).repeat(1, org_shape[1], 1)
        cut = data.clone().reshape(org_shape[0], org_shape[1], -1).scatter_(-1, idx, 0)
        states.append(cut.reshape(*org_shape))
    with torch.no_grad():  # the authors run one forward per step; here all steps in one
        out = model(normalize(torch.cat(states)))
    accuracy = list((out.max(1, keepdim=True)[1][:, 0] == target.repeat(10)).view(10, -1))
    accuracy.append(torch.zeros_like(target, dtype=torch.bool))
    acc = [a.double() for a in accuracy]
    return sum((acc[i] + acc[i + 1]) / 2 * 0.1 for i in range(10))


def _pixels_and_inputs(model, x):
    prep = xvit.get_adapter(model).preprocessing
    pixels = prep.denormalize(x).clamp(0, 1)
    return prep, pixels, prep.normalize(pixels)


def test_token_perturbation_equals_the_authors_computation(digits) -> None:
    tiny = MODEL_FACTORIES["timm-vit"]()
    g = torch.Generator().manual_seed(5)
    tiny_x = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        tiny_labels = tiny(tiny_x).argmax(-1).tolist()  # hits at 0 %, so the curve can fall
    digits_model, digits_x, digit_labels, digit_maps = digits
    cases = [
        (tiny, tiny_x, tiny_labels, torch.rand(4, 4, 4, generator=g), "bilinear"),
        (digits_model, digits_x, digit_labels, digit_maps, "bilinear"),
        (digits_model, digits_x, digit_labels, digit_maps, "nearest"),  # tied pixels
    ]
    spread = []
    for order in ("positive", "negative"):
        negative = order == "negative"
        for model, x, labels, maps, mode in cases:
            prep, pixels, inputs = _pixels_and_inputs(model, x)
            patch = xvit.get_adapter(model).geometry.patch_size[0]
            metric = TokenPerturbation(order=order, upsample=mode, batch_size=25)
            got = metric(model, inputs, labels, maps).scores
            want = chefer_reference(
                model, pixels, prep.mean, prep.std, maps, labels, patch, negative, mode
            )
            torch.testing.assert_close(got, want)
            spread.append(float(got.max() - got.min()))
        assert TokenPerturbation(order=order).higher_is_better == negative
    assert max(spread) > 0  # the scores differ between images: the check can fail
    assert not TokenPerturbation.expensive and TokenPerturbation.cost


def test_token_perturbation_patch_unit_removes_whole_patches(digits) -> None:
    model, x, labels, maps = digits
    maps = maps + torch.rand(maps.shape, generator=torch.Generator().manual_seed(0)) * 0.01
    prep, _pixels, inputs = _pixels_and_inputs(model, x)
    got = token_perturbation(model, inputs, labels, maps, unit="patch", order="negative")
    black = prep.normalize(torch.zeros_like(inputs))
    flat = maps.flatten(1)  # 8 x 8 patches of 8 x 8 pixels, no ties
    hits = []
    for step in [0.0, *STEPS]:
        mask = torch.zeros_like(flat, dtype=torch.bool)
        if step:  # the least salient patches first
            mask.scatter_(1, torch.topk(-flat, int(64 * step)).indices, True)
        mask = mask.view(-1, 1, 8, 8).repeat_interleave(8, 2).repeat_interleave(8, 3)
        with torch.no_grad():
            out = model(torch.where(mask, black, inputs))
        hits.append((out.argmax(-1) == torch.as_tensor(labels)).double())
    hits.append(torch.zeros(len(labels), dtype=torch.float64))
    want = sum((a + b) / 2 * 0.1 for a, b in itertools.pairwise(hits))
    torch.testing.assert_close(got.scores, want)


def test_token_perturbation_refuses_bad_parameters() -> None:
    with pytest.raises(xvit.ParameterError, match="order"):
        TokenPerturbation(order="both")
    with pytest.raises(xvit.ParameterError, match="substrate"):
        TokenPerturbation(substrate="blur")
    assert TokenPerturbation(unit="patch").upsample == "nearest"
    assert "negative order" in TokenPerturbation(order="negative").footnote((64, 64))
