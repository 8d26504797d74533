"""Metrics against analytic answers and plain references written here from the papers.

- Insertion/Deletion: a fake model whose probability is a known function of the revealed
  pixels gives exact curves; on a real tiny ViT every substrate is checked against a
  step-by-step loop in the style of RISE's evaluation code (blur against torchvision).
- Pointing game: TorchRay's acceptance-region test re-written here; hits at a known distance.
- Energy pointing game: the Score-CAM definition re-written here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from xvit._seeds import derive_seed
from xvit.metrics import (
    Batch,
    Deletion,
    EnergyPointingGame,
    Insertion,
    Metric,
    MetricResult,
    PointingGame,
    get_metric,
    list_metrics,
)
from xvit.metrics.functional import deletion, energy_pointing_game, insertion, pointing_game
from xvit.models._base import Geometry, ModelAdapter

# --------------------------------------------------------------------------------------------
# an analytic model: p(class 0) = sum of w over the pixels of channel 0 (x in {0, 1})


class WeightedPixels(ModelAdapter):
    """Two classes; p0 = sum(w * x[:, 0]) clamped to [0, 1], logits (log p0, log(1 - p0))."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__(nn.Identity())
        self.weights = weights.double()

    @classmethod
    def matches(cls, model: object) -> bool:
        return False

    @property
    def geometry(self) -> Geometry:
        h, w = self.weights.shape
        return Geometry(1, 1, 4, 1, (1, 1), (h, w))

    @property
    def preprocessing(self) -> xvit.Preprocessing:
        return xvit.Preprocessing(size=tuple(self.weights.shape), mean=(0.5,) * 3, std=(0.25,) * 3)

    @property
    def num_classes(self) -> int:
        return 2

    def blocks(self) -> list:
        return []

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        p = (x[:, 0].double() * self.weights).sum(dim=(1, 2)).clamp(0, 1)
        return torch.stack([p.log(), (1 - p).log()], dim=1).float()

    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        yield


def ones(h: int, w: int, b: int = 1) -> torch.Tensor:
    return torch.ones(b, 3, h, w)


def one_hot(h: int, w: int, row: int, col: int) -> torch.Tensor:
    t = torch.zeros(h, w)
    t[row, col] = 1.0
    return t


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


# --------------------------------------------------------------------------------------------
# insertion / deletion: analytic answers


def test_one_hot_weight_with_matching_map_gives_known_aucs() -> None:
    adapter = WeightedPixels(one_hot(4, 4, 2, 1))
    sal = one_hot(4, 4, 2, 1).unsqueeze(0)
    ins = Insertion(substrate="zero")(adapter, ones(4, 4), [0], sal)
    dele = Deletion(substrate="zero")(adapter, ones(4, 4), [0], sal)
    # one row (4 pixels) per step: 5 points at 0, .25, .5, .75, 1
    assert ins.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ins.curves[0].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert dele.curves[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert ins.scores.item() == pytest.approx(0.875)
    assert dele.scores.item() == pytest.approx(0.125)


def test_ties_raster_option_breaks_ties_in_raster_order() -> None:
    # a constant map reveals the image row by row from the top: pixel (2, 1) arrives at step 3
    adapter = WeightedPixels(one_hot(4, 4, 2, 1))
    flat = torch.full((1, 4, 4), 0.3)
    ins = Insertion(substrate="zero", ties="raster")(adapter, ones(4, 4), [0], flat)
    dele = Deletion(substrate="zero", ties="raster")(adapter, ones(4, 4), [0], flat)
    assert ins.curves[0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert dele.curves[0].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert ins.scores.item() == pytest.approx(0.375)
    assert dele.scores.item() == pytest.approx(0.625)
    # ties inside a patch of a coarse map: also raster order within the tied pixels
    coarse = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # top-right 2x2 block first
    adapter = WeightedPixels(one_hot(4, 4, 1, 3))  # the last pixel of that block
    ins = Insertion(substrate="zero", step=1, ties="raster")(adapter, ones(4, 4), [0], coarse)
    assert ins.curves[0, :5].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_default_ties_rule_never_splits_a_tie_group() -> None:
    # a constant map: the whole image is one group, so the curve is the straight line from
    # nothing changed to everything changed, wherever the weighted pixel sits
    for row, col in ((0, 0), (2, 1), (3, 3)):
        adapter = WeightedPixels(one_hot(4, 4, row, col))
        flat = torch.full((1, 4, 4), 0.3)
        ins = Insertion(substrate="zero")(adapter, ones(4, 4), [0], flat)
        dele = Deletion(substrate="zero")(adapter, ones(4, 4), [0], flat)
        assert ins.curves[0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert dele.curves[0].tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
        assert ins.scores.item() == pytest.approx(0.5)
    # a coarse map: the top-right block (4 pixels) is one group; at 1, 2, 3 pixels the value
    # is interpolated between the block absent (0) and present (the block's weight, 1)
    coarse = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    adapter = WeightedPixels(one_hot(4, 4, 1, 3))
    ins = Insertion(substrate="zero", step=1)(adapter, ones(4, 4), [0], coarse)
    assert ins.curves[0, :6].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # the same map transposed: the same curve (the score depends on values, not positions)
    adapter_t = WeightedPixels(one_hot(4, 4, 3, 1))
    ins_t = Insertion(substrate="zero", step=1)(adapter_t, ones(4, 4), [0], coarse.mT)
    assert ins_t.curves.tolist() == ins.curves.tolist()


@pytest.mark.parametrize("step", [None, 1, 3, 5, 16])
def test_curves_are_cumulative_weight_in_saliency_order(step: int | None) -> None:
    g = torch.Generator().manual_seed(1)
    h, w = 4, 4
    weights = torch.rand(h, w, generator=g, dtype=torch.float64)
    weights /= weights.sum()
    sal = torch.rand(2, h, w, generator=g)
    sal[1, :2] = 0.5  # ties
    adapter = WeightedPixels(weights)
    ins = Insertion(substrate="zero", step=step, ties="raster")(adapter, ones(h, w, 2), [0, 0], sal)
    dele = Deletion(substrate="zero", step=step, ties="raster")(adapter, ones(h, w, 2), [0, 0], sal)
    # reference from the definition: counts 0, s, 2s, ..., all pixels (last step may be short)
    s = step or w
    counts = np.minimum(np.arange(0, math.ceil(h * w / s) + 1) * s, h * w)
    x = counts / (h * w)
    for i in range(2):
        order = np.argsort(-sal[i].numpy().ravel(), kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(weights.numpy().ravel()[order])])
        ref_ins = np.clip(cum[counts], 0, 1)
        ref_del = np.clip(1 - cum[counts], 0, 1)
        np.testing.assert_allclose(ins.curves[i].numpy(), ref_ins, atol=1e-6)
        np.testing.assert_allclose(dele.curves[i].numpy(), ref_del, atol=1e-6)
        assert ins.scores[i].item() == pytest.approx(trapezoid(ref_ins, x), abs=1e-6)
        assert dele.scores[i].item() == pytest.approx(trapezoid(ref_del, x), abs=1e-6)
    np.testing.assert_allclose(ins.fractions.numpy(), x)


def test_gradmask_protocol_points_and_settings() -> None:
    h = w = 10  # 100 pixels: the authors' percentages are whole pixel counts
    g = torch.Generator().manual_seed(2)
    weights = torch.rand(h, w, generator=g, dtype=torch.float64)
    weights /= weights.sum()
    sal = torch.rand(1, h, w, generator=g)  # tie-free: every order is the same
    metric = Insertion(protocol="gradmask", substrate="black")
    assert metric.substrate == "zero"  # the authors' "black" is 0 in normalised space
    assert (metric.blur_kernel, metric.blur_sigma) == (15, 7.0)
    assert Deletion(protocol="gradmask").substrate == "zero"
    assert Insertion(protocol="gradmask").substrate == "blur"
    assert Insertion(protocol="gradmask", substrate="mean").substrate == "scalar_mean"
    assert Insertion(protocol="gradmask", substrate="random").substrate == "randn"
    assert Insertion(protocol="gradmask").ties == "argsort"
    adapter = WeightedPixels(weights)
    res = metric(adapter, ones(h, w), [0], sal)
    dele = Deletion(protocol="gradmask")(adapter, ones(h, w), [0], sal)
    pct = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]  # no 0 % point
    x = np.array(pct) / 100
    np.testing.assert_allclose(res.fractions.numpy(), x)
    order = np.argsort(-sal[0].numpy().ravel(), kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(weights.numpy().ravel()[order])])
    ins_ref, del_ref = np.clip(cum[pct], 0, 1), np.clip(1 - cum[pct], 0, 1)
    np.testing.assert_allclose(res.curves[0].numpy(), ins_ref, atol=1e-6)
    np.testing.assert_allclose(dele.curves[0].numpy(), del_ref, atol=1e-6)
    # insertion: area from 1 % on; deletion: (0, 0) prepended, as utils.plot_auc_line
    assert res.scores.item() == pytest.approx(trapezoid(ins_ref, x), abs=1e-6)
    assert dele.scores.item() == pytest.approx(
        trapezoid(np.r_[0.0, del_ref], np.r_[0.0, x]), abs=1e-6
    )
    # custom fractions must include both ends (xvit), lie in (0, 1] (gradmask)
    with pytest.raises(xvit.ParameterError, match="from 0 to 1"):
        Insertion(fractions=(0.1, 0.5, 1.0))
    with pytest.raises(xvit.ParameterError, match=r"within \(0, 1\]"):
        Insertion(protocol="gradmask", fractions=(0.0, 0.5, 1.0))
    with pytest.raises(xvit.ParameterError, match="instead of step"):
        Insertion(protocol="gradmask", step=4)


def test_functional_twins_match_the_classes() -> None:
    adapter = WeightedPixels(one_hot(4, 4, 0, 0))
    sal = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = insertion(adapter, ones(4, 4), [0], sal, substrate="zero", step=2)
    b = Insertion(substrate="zero", step=2)(adapter, ones(4, 4), [0], sal)
    assert torch.equal(a.scores, b.scores)
    a = deletion(adapter, ones(4, 4), [0], sal, substrate="mean")
    b = Deletion(substrate="mean")(adapter, ones(4, 4), [0], sal)
    assert torch.equal(a.curves, b.curves)


# --------------------------------------------------------------------------------------------
# insertion / deletion against a RISE-style loop on a real tiny ViT


def reference_substrate(name: str, x: torch.Tensor, prep: xvit.Preprocessing, k: int, s: float):
    import torchvision.transforms.functional as TF

    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    if name == "zero":
        return torch.zeros_like(x)
    if name == "black":
        return ((0.0 - mean) / std).expand_as(x).clone()
    if name == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if name == "blur":
        return TF.gaussian_blur(x, [k, k], [s, s])
    raise AssertionError(name)


def rise_loop(model, x, target, sal, start, finish, step):
    """Per image, per step: score, then copy the next `step` pixels from `finish`."""
    b, c, h, w = x.shape
    n = h * w
    n_steps = (n + step - 1) // step
    curves = np.empty((b, n_steps + 1))
    for i in range(b):
        cur = start[i : i + 1].clone()
        order = np.argsort(-sal[i].numpy().ravel(), kind="stable")
        for k in range(n_steps + 1):
            with torch.no_grad():
                curves[i, k] = model(cur).softmax(-1)[0, target[i]].item()
            coords = torch.from_numpy(order[step * k : step * (k + 1)].copy())
            cur.view(1, c, n)[0, :, coords] = finish[i].reshape(c, n)[:, coords]
    return curves


@pytest.mark.parametrize("substrate", ["blur", "zero", "black", "mean"])
def test_matches_rise_style_loop_on_a_vit(substrate: str) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=2, seed=3)
    target = [1, 4]
    sal = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(4))
    sal_up = sal.repeat_interleave(8, 1).repeat_interleave(8, 2)  # nearest, 8 px patches
    ins = Insertion(substrate=substrate, batch_size=16, ties="raster")(model, x, target, sal)
    dele = Deletion(substrate=substrate, batch_size=16, ties="raster")(model, x, target, sal)
    sub = reference_substrate(substrate, x, adapter.preprocessing, 11, 5.0)
    step = x.shape[-1]
    ref_ins = rise_loop(model, x, target, sal_up, sub, x, step)
    ref_del = rise_loop(model, x, target, sal_up, x, sub, step)
    np.testing.assert_allclose(ins.curves.numpy(), ref_ins, atol=2e-5)
    np.testing.assert_allclose(dele.curves.numpy(), ref_del, atol=2e-5)
    # RISE's auc(): uniform spacing, (sum - ends / 2) / steps
    for curves, res in ((ref_ins, ins), (ref_del, dele)):
        rise_auc = (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / (curves.shape[1] - 1)
        np.testing.assert_allclose(res.scores.numpy(), rise_auc, atol=2e-5)


def test_random_substrate_is_uniform_pixels_seeded_per_image() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    prep = xvit.get_adapter(model).preprocessing
    x = model_input(model, batch=3, seed=5)
    sal = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(6))
    metric = Deletion(substrate="random", batch_size=32)
    batch = metric(model, x, [0, 1, 2], sal, seeds=[10, 11, 12])
    alone = metric(model, x[1:2], [1], sal[1:2], seeds=[11])
    torch.testing.assert_close(alone.curves[0], batch.curves[1], atol=1e-5, rtol=0)
    other = metric(model, x[1:2], [1], sal[1:2], seeds=[99])
    assert not torch.allclose(other.curves, alone.curves)
    # the fully deleted image is the noise: check it is uniform [0, 1] pixels, normalised
    from xvit.metrics._substrates import make_substrate

    noise = make_substrate("random", x, prep, blur_kernel=3, blur_sigma=1.0, seeds=[10, 11, 12])
    pixels = prep.denormalize(noise)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert abs(pixels.mean().item() - 0.5) < 0.05
    assert not torch.equal(noise[0], noise[1])


def test_batching_does_not_change_scores() -> None:
    model = MODEL_FACTORIES["timm-deit-distilled"]()
    x = model_input(model, batch=3, seed=7)
    sal = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(8))
    full = Insertion(batch_size=7)(model, x, [0, 2, 4], sal)
    for i in range(3):
        one = Insertion(batch_size=64)(model, x[i : i + 1], [[0, 2, 4][i]], sal[i : i + 1])
        torch.testing.assert_close(one.curves[0], full.curves[i], atol=1e-5, rtol=0)


def test_rectangular_input_and_explanation_objects() -> None:
    model = MODEL_FACTORIES["timm-vit-rect"]()  # 24 x 40 input, 3 x 5 patches
    x = model_input(model, batch=1)
    e = xvit.explain("random", model, x, seed=0)
    res = Deletion()(model, x, e.targets, e)
    assert res.curves.shape == (1, 24 + 1)  # one row of 40 pixels per step
    assert res.fractions[0] == 0 and res.fractions[-1] == 1


def test_model_left_as_it_was() -> None:
    model = MODEL_FACTORIES["timm-vit"]().train()
    before = xvit.hook_counts(model)
    x = model_input(model, batch=1)
    Insertion()(model, x, [0], torch.rand(1, 4, 4))
    assert model.training and all(m.training for m in model.modules())
    assert xvit.hook_counts(model) == before


def test_bad_inputs_raise_clear_errors() -> None:
    adapter = WeightedPixels(one_hot(4, 4, 0, 0))
    sal = torch.rand(1, 4, 4)
    with pytest.raises(xvit.ParameterError, match="substrate must be one of"):
        Insertion(substrate="gray")
    with pytest.raises(xvit.ParameterError, match="step must be a positive integer"):
        Deletion(step=0)
    with pytest.raises(xvit.ParameterError, match="not both"):
        Deletion(step=2, fractions=(0, 1))
    with pytest.raises(xvit.ParameterError, match="blur_kernel must be an odd"):
        Insertion(blur_kernel=4)
    with pytest.raises(xvit.ParameterError, match="unknown parameter"):
        insertion(adapter, ones(4, 4), [0], sal, steps=3)
    with pytest.raises(xvit.InvalidInputError, match="2 saliency maps for 1 images"):
        Insertion()(adapter, ones(4, 4), [0], torch.rand(2, 4, 4))
    bad = sal.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(xvit.InvalidInputError, match="NaN"):
        Insertion(substrate="zero")(adapter, ones(4, 4), [0], bad)
    with pytest.raises(xvit.ParameterError, match="too large"):
        Insertion(substrate="blur")(adapter, ones(4, 4), [0], sal)  # kernel 11 on 4 x 4
    with pytest.raises(xvit.InvalidInputError, match="out of range"):
        Insertion(substrate="zero")(adapter, ones(4, 4), [5], sal)


# --------------------------------------------------------------------------------------------
# pointing game


def reference_mask(boxes, h: int, w: int) -> np.ndarray:
    """Pixels whose centre lies in a box (the documented rule), one pixel at a time."""
    m = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        for r in range(h):
            for c in range(w):
                if x0 <= c + 0.5 < x1 and y0 <= r + 0.5 < y1:
                    m[r, c] = True
    return m


def torchray_hit(mask: np.ndarray, point: tuple[int, int], tolerance: float) -> int:
    """TorchRay's PointingGame.evaluate: +1 when the disc around (u, v) touches the mask."""
    h, w = mask.shape
    v, u = np.meshgrid(
        (np.arange(h) - point[1]) ** 2.0, (np.arange(w) - point[0]) ** 2.0, indexing="ij"
    )
    accept = (v + u) < tolerance**2
    return 1 if (mask & accept).any() else -1


def test_pointing_game_matches_torchray_reference() -> None:
    rng = np.random.default_rng(0)
    h, w, patch = 48, 64, 8
    maps = torch.rand(30, h // patch, w // patch, generator=torch.Generator().manual_seed(1))
    s_batch = []
    for _ in range(30):
        k = int(rng.integers(0, 3))
        boxes = []
        for _box in range(k):
            x0, y0 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
            boxes.append((x0, y0, x0 + rng.uniform(1, 20), y0 + rng.uniform(1, 20)))
        s_batch.append(boxes)
    got = pointing_game(maps, s_batch, size=(h, w), tolerance=15)
    up = np.kron(maps.numpy(), np.ones((patch, patch)))
    for i in range(30):
        if not s_batch[i]:
            assert math.isnan(got[i])
            continue
        flat = int(np.argmax(up[i]))
        point = (flat % w, flat // w)  # (u, v) = (x, y)
        hit = torchray_hit(reference_mask(s_batch[i], h, w), point, 15)
        assert got[i].item() == (1.0 if hit == 1 else 0.0), i
    assert 0 < np.nansum(got.numpy()) < np.sum(~np.isnan(got.numpy()))  # both outcomes seen


def test_pointing_game_tolerance_is_strict_euclidean() -> None:
    m = torch.zeros(1, 64, 64)
    m[0, 10, 10] = 1.0  # maximum at x = 10, y = 10
    # nearest box pixel at x = 25 (distance 15): a miss at tolerance 15, a hit at 15.5
    far = [[(25, 10, 30, 11)]]
    assert pointing_game(m, far, tolerance=15).item() == 0.0
    assert pointing_game(m, far, tolerance=15.5).item() == 1.0
    near = [[(24, 10, 30, 11)]]  # distance 14
    assert pointing_game(m, near, tolerance=15).item() == 1.0
    diag = [[(19, 19, 20, 20)]]  # distance sqrt(81 + 81) = 12.7
    assert pointing_game(m, diag, tolerance=13).item() == 1.0
    assert pointing_game(m, diag, tolerance=12.7).item() == 0.0


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (120, 48), (224, 224)])
def test_pointing_game_default_tolerance_is_15_px_per_224_px_of_the_shorter_side(size) -> None:
    h, w = size
    tolerance = 15 * min(h, w) / 224
    m = torch.zeros(2, h, w)
    m[:, 10, 10] = 1.0  # maximum at x = 10, y = 10
    # one box pixel the largest whole distance inside the tolerance away, one the next one out
    inside, outside = 10 + math.ceil(tolerance) - 1, 10 + math.ceil(tolerance)
    boxes = [[(inside, 10, inside + 1, 11)], [(outside, 10, outside + 1, 11)]]
    assert pointing_game(m, boxes).tolist() == [1.0, 0.0]
    x = torch.zeros(2, 3, h, w)
    default = PointingGame()
    assert default(None, x, [0, 0], m, boxes).scores.tolist() == [1.0, 0.0]
    assert default.tolerance_at(size) == pytest.approx(tolerance)
    assert f"{tolerance:.1f} px" in default.footnote(size) and "224" in default.footnote(size)
    # an explicit tolerance is pixels, whatever the input size
    assert PointingGame(tolerance=40)(None, x, [0, 0], m, boxes).scores.tolist() == [1.0, 1.0]
    assert "set by the tolerance parameter" in PointingGame(tolerance=40).footnote(size)


def test_pointing_game_nan_without_boxes_and_accuracy_over_defined() -> None:
    m = torch.zeros(3, 32, 32)
    m[:, 5, 5] = 1.0
    s = [[(0, 0, 8, 8)], [(20, 20, 32, 32)], []]
    x = torch.zeros(3, 3, 32, 32)
    res = PointingGame()(None, x, [0, 0, 0], m, s)
    assert res.scores[:2].tolist() == [1.0, 0.0] and math.isnan(res.scores[2])
    assert res.mean() == 0.5
    assert PointingGame.aggregate(res.scores) == 0.5
    with pytest.raises(xvit.InvalidInputError, match="needs ground truth"):
        PointingGame()(None, x, [0, 0, 0], m)
    with pytest.raises(xvit.InvalidInputError, match="one list of"):
        PointingGame()(None, x, [0, 0, 0], m, s[:2])
    with pytest.raises(xvit.InvalidInputError, match="x1 < x0"):
        PointingGame()(None, x, [0, 0, 0], m, [[(5, 0, 1, 4)], [], []])
    with pytest.raises(xvit.ParameterError, match="tolerance"):
        PointingGame(tolerance=-1)


def test_pointing_game_first_maximum_and_mask_input() -> None:
    # a constant map points at pixel (0, 0), TorchRay's argmax convention
    flat = torch.ones(1, 4, 4)
    assert pointing_game(flat, [[(0, 0, 1, 1)]], tolerance=1).item() == 1.0
    assert pointing_game(flat, [[(1, 0, 2, 1)]], tolerance=1).item() == 0.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = True
    assert pointing_game(flat, mask, tolerance=1.5).item() == 1.0


def test_tiny_box_marks_the_pixel_that_holds_it() -> None:
    m = torch.zeros(1, 16, 16)
    m[0, 7, 3] = 1.0
    # 0.2 px wide box inside pixel (row 7, col 3), covering no pixel centre
    assert pointing_game(m, [[(3.1, 7.2, 3.3, 7.4)]], tolerance=1).item() == 1.0


# --------------------------------------------------------------------------------------------
# energy pointing game


def reference_energy(sal: np.ndarray, mask: np.ndarray) -> float:
    s = (sal - sal.min()) / (sal.max() - sal.min())
    return float((s * mask).sum() / s.sum())


def test_energy_pointing_game_matches_score_cam_definition() -> None:
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(5, 4, 6, generator=g)
    boxes = [
        [(0, 0, 10, 10)],
        [(3.5, 2.2, 20.7, 31.9), (40, 0, 48, 8)],
        [(0, 0, 48, 32)],
        [(47, 31, 48, 32)],
        [(8, 8, 9, 9)],
    ]
    got = energy_pointing_game(maps, boxes, size=(32, 48))
    up = np.kron(maps.numpy(), np.ones((8, 8)))
    for i in range(5):
        ref = reference_energy(up[i], reference_mask(boxes[i], 32, 48))
        assert got[i].item() == pytest.approx(ref, abs=1e-9)
    assert got[2].item() == pytest.approx(1.0)  # the whole image is the box


def test_energy_pointing_game_known_values_and_nan() -> None:
    m = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]])
    x = torch.zeros(2, 3, 2, 2)
    res = EnergyPointingGame()(None, x, [0, 0], m, [[(1, 1, 2, 2)], [(0, 0, 1, 1)]])
    assert res.scores[0].item() == pytest.approx(1.0 / 2.0)  # (1) / (0 + 1/3 + 2/3 + 1)
    assert math.isnan(res.scores[1].item())  # a constant map has no energy
    neg = torch.tensor([[[-1.0, 1.0], [1.0, 2.0]]])
    clamp = energy_pointing_game(neg, [[(0, 0, 1, 1)]], normalize="clamp")
    assert clamp.item() == 0.0
    raw = energy_pointing_game(neg, [[(1, 1, 2, 2)]], normalize="none")
    assert raw.item() == pytest.approx(2.0 / 3.0)
    empty = energy_pointing_game(neg, [[]])
    assert math.isnan(empty.item())


# --------------------------------------------------------------------------------------------
# boxes from the original image into the model input


@pytest.mark.parametrize(
    "prep, size",
    [
        (xvit.Preprocessing(size=(32, 32), crop_pct=0.875, interpolation="nearest"), (90, 60)),
        (xvit.Preprocessing(size=(32, 32), crop_pct=0.875, interpolation="nearest"), (50, 120)),
        (xvit.Preprocessing(size=(32, 32), squash=True, interpolation="nearest"), (90, 60)),
        (xvit.Preprocessing(size=(24, 40), crop_pct=0.9, interpolation="nearest"), (100, 70)),
    ],
)
def test_transform_boxes_follows_the_pixels(prep: xvit.Preprocessing, size) -> None:
    """Paint the box white, preprocess the image, and find the box again in the input."""
    w, h = size
    box = (0.3 * w, 0.25 * h, 0.7 * w, 0.8 * h)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[round(box[1]) : round(box[3]), round(box[0]) : round(box[2])] = 255
    x = prep.denormalize(prep(Image.fromarray(arr)))[0]
    (mapped,) = prep.transform_boxes([box], original_size=(w, h))
    rows = torch.nonzero(x.max(dim=1).values > 0.5).flatten()
    cols = torch.nonzero(x.max(dim=0).values > 0.5).flatten()
    found = (cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1)
    for got, want in zip(found, mapped):
        assert abs(got - want) <= 1.0, (found, mapped)


def test_transform_boxes_drops_cropped_boxes_and_checks_input() -> None:
    prep = xvit.Preprocessing(size=(32, 32), crop_pct=0.5)  # 100 px -> 64 px, crop at 16
    kept = prep.transform_boxes([(0, 0, 10, 10), (40, 40, 60, 60)], (100, 100))
    assert len(kept) == 1 and kept[0] == pytest.approx((9.6, 9.6, 22.4, 22.4))
    assert prep.transform_boxes([], (100, 100)) == ()
    with pytest.raises(xvit.InvalidInputError, match="width, height"):
        prep.transform_boxes([(0, 0, 1, 1)], (0, 10))
    with pytest.raises(xvit.InvalidInputError, match="four finite numbers"):
        prep.transform_boxes([(0, 0, 1)], (10, 10))


# --------------------------------------------------------------------------------------------
# the call every metric shares: Metric.__call__ checks a batch once, a metric scores it


class Probe(Metric):
    """Keeps the Batch its score receives, and the model's mode during the call."""

    name = "probe"
    needs_model = True
    needs_boxes = True

    def __init__(self, *, upsample: str = "nearest") -> None:
        self.upsample = upsample
        self.seen: list[tuple[Batch, bool]] = []

    def score(self, batch: Batch) -> MetricResult:
        assert batch.adapter is not None
        self.seen.append((batch, batch.adapter.model.training))
        return MetricResult(self.name, torch.zeros(batch.x.shape[0], dtype=torch.float64))


def test_score_receives_the_batch_checked_and_in_shape() -> None:
    adapter = WeightedPixels(one_hot(4, 4, 0, 0))
    adapter.model.train()
    probe = Probe(upsample="bilinear")
    maps = torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(0))
    probe(adapter, ones(4, 4, 2).double(), None, maps, [[(0, 0, 2, 2)], []], seeds=[1, 2])
    ((batch, training),) = probe.seen
    assert batch.adapter is adapter and batch.size == (4, 4) and not training
    assert adapter.model.training  # put back after the call
    assert batch.x.dtype == adapter.dtype  # the images in the model's dtype
    up = F.interpolate(maps.unsqueeze(1), size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(batch.saliency, up[:, 0])
    assert batch.target is not None and batch.target.tolist() == [0, 0]  # the prediction
    assert batch.boxes is not None and batch.boxes.sum(dim=(1, 2)).tolist() == [4, 0]
    assert batch.seeds == (1, 2)
    # the checks are the base's, the same for this metric as for the built-ins
    boxes = [[(0, 0, 2, 2)], []]
    with pytest.raises(xvit.InvalidInputError, match="needs ground truth"):
        probe(adapter, ones(4, 4, 2), None, maps)
    with pytest.raises(xvit.InvalidInputError, match="1 saliency maps for 2 images"):
        probe(adapter, ones(4, 4, 2), None, maps[:1], boxes)
    with pytest.raises(xvit.InvalidInputError, match="out of range"):
        probe(adapter, ones(4, 4, 2), [7, 0], maps, boxes)
    with pytest.raises(xvit.ParameterError, match="seeds must be 2 integers"):
        probe(adapter, ones(4, 4, 2), None, maps, boxes, seeds=[1])
    with pytest.raises(xvit.InvalidInputError, match="x_batch must be"):
        probe(adapter, torch.ones(3, 4, 4), None, maps, boxes)
    assert len(probe.seen) == 1


def test_a_metric_overriding_call_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"implement score\(batch\)") as record:

        class Legacy(Metric):
            name = "legacy"

            def __call__(self, model, x_batch, y_batch, a_batch, s_batch=None, *, seeds=None):
                return MetricResult(self.name, torch.ones(len(x_batch), dtype=torch.float64))

    assert record[0].filename == __file__  # the warning points at the class
    assert Legacy()(None, torch.zeros(2, 3, 4, 4), None, None).scores.tolist() == [1.0, 1.0]


def test_seeds_none_follows_the_seed_rule() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=2, seed=5)
    sal = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(6))
    metric = Deletion(substrate="random", seed=3, step=256)
    implicit = metric(model, x, [0, 1], sal)
    explicit = metric(model, x, [0, 1], sal, seeds=[derive_seed(3, 0), derive_seed(3, 1)])
    assert torch.equal(implicit.curves, explicit.curves)
    fresh = Deletion(substrate="random", seed=None, step=256)
    torch.manual_seed(0)
    first = fresh(model, x, [0, 1], sal)
    torch.manual_seed(0)
    assert torch.equal(fresh(model, x, [0, 1], sal).curves, first.curves)
    with pytest.raises(xvit.ParameterError, match="seed must be a non-negative integer"):
        Deletion(seed=-1)


def test_parameters_are_checked_by_the_constraint_tables() -> None:
    with pytest.raises(
        xvit.ParameterError, match=r"batch_size must be a positive integer or 'auto'"
    ):
        Insertion(batch_size=0)
    with pytest.raises(xvit.ParameterError, match="fractions must be a sequence of numbers"):
        Insertion(fractions=3)
    with pytest.raises(xvit.ParameterError, match="blur_sigma must be a positive number"):
        Deletion(blur_sigma=0)
    with pytest.raises(xvit.ParameterError, match="upsample must be one of"):
        PointingGame(upsample="area")
    with pytest.raises(xvit.ParameterError, match="tolerance must be a positive number"):
        pointing_game(torch.rand(1, 2, 2), [[]], tolerance=True)
    with pytest.raises(xvit.ParameterError, match="normalize must be one of"):
        EnergyPointingGame(normalize="l2")
    with pytest.raises(xvit.ParameterError, match="normalize must be one of"):
        energy_pointing_game(torch.rand(1, 2, 2), [[]], normalize=None)  # no preset here
    assert EnergyPointingGame(max_box_fraction=math.inf).max_box_fraction == math.inf
    assert "'auto'" in Insertion.describe_params()["batch_size"]


# --------------------------------------------------------------------------------------------
# registry-wide checks


def test_builtin_directions() -> None:
    assert Insertion.higher_is_better is True
    assert Deletion.higher_is_better is False
    assert PointingGame.higher_is_better is True
    assert EnergyPointingGame.higher_is_better is True


@pytest.mark.parametrize("name", list_metrics())
def test_every_registered_metric_is_documented(name: str) -> None:
    cls = get_metric(name)
    assert isinstance(cls.higher_is_better, bool)
    assert cls.name == name and cls.summary and cls.paper
    doc = inspect.getdoc(cls) or ""
    assert "References:" in doc and "Example:" in doc
    cls.create()  # default settings are valid
    assert set(cls.constraints()) == set(cls.param_names())  # every parameter declared


def test_unknown_metric_lists_known_names() -> None:
    with pytest.raises(xvit.UnknownNameError, match="insertion"):
        get_metric("insertoin")


def test_metric_modules_are_modules_and_calling_one_as_its_twin_warns() -> None:
    """``xvit.metrics.insertion`` is the module of insertion.py (its dotted path imports it);
    code that called it as the function still gets the function's result, with a warning."""
    import importlib

    import xvit.metrics

    saliency = torch.zeros(1, 4, 4)
    saliency[0, 1, 2] = 1.0
    boxes = [[(8, 4, 12, 8)]]
    for name in ("insertion", "deletion", "pointing_game", "energy_pointing_game"):
        module = getattr(xvit.metrics, name)
        assert module is importlib.import_module(f"xvit.metrics.{name}")
    with pytest.warns(DeprecationWarning, match="xvit.metrics.functional.pointing_game"):
        old = xvit.metrics.pointing_game(saliency, boxes, size=(16, 16), tolerance=0.5)
    new = pointing_game(saliency, boxes, size=(16, 16), tolerance=0.5)
    assert torch.equal(old, new)


class _Reexplain(Metric):
    """A metric that explains again: it scores how far a fresh map is from the given one."""

    name = "reexplain-example"
    needs_model = True
    needs_explainer = True

    def score(self, batch: Batch) -> MetricResult:
        assert batch.explainer is not None and batch.adapter is not None
        again = batch.explainer.attribute(batch.adapter, batch.x, batch.target)
        diff = (again - batch.saliency[:, ::8, ::8]).abs().flatten(1).amax(1)
        return MetricResult(self.name, diff.double().cpu())


def test_a_metric_that_explains_again_gets_the_method_or_a_clear_error() -> None:
    model = xvit.load_model("xvit:digits-vit")
    x = torch.randn(2, 3, 64, 64)
    e = xvit.explain("rollout", model, x)
    metric = _Reexplain()
    for method in ("rollout", xvit.make_explainer("rollout")):
        scores = metric(model, x, e.targets, e, explainer=method).scores
        assert scores.abs().max() < 1e-5  # rollout again on the same model: the same maps
    with pytest.raises(xvit.ParameterError, match="explainer='gradmask'"):
        metric(model, x, e.targets, e)
    with pytest.raises(xvit.ParameterError, match=r"xvit\.Explainer or a method name"):
        metric(model, x, e.targets, e, explainer=3)
