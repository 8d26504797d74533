"""RISE, ViT-CX and the shared mask-scoring kernel against plain references written here from
the papers' definitions (and scipy/scikit-learn/torchvision as independent oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from xvit.methods._scoring import score_masks, sum_weighted_masks
from xvit.methods.rise import RISE
from xvit.methods.vitcx import ViTCX, combine


def _probs(model: nn.Module, xs: torch.Tensor, target: int) -> torch.Tensor:
    """Target probability of each of a stack of images, straight from the (timm) model."""
    with torch.no_grad():
        return model(xs).softmax(-1)[:, target]


# --- the kernel ---------------------------------------------------------------------------
def test_score_masks_matches_loop_per_image_masks() -> None:
    model = MODEL_FACTORIES["timm-deit-distilled"]()
    x = model_input(model, batch=2)
    targets = torch.tensor([1, 3])
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(2, 5, 4, 4, generator=g) > 0.5).float()
    got = score_masks(xvit.get_adapter(model), x, targets, masks, batch_size=3)
    want = torch.empty(2, 5)
    for b in range(2):
        up = masks[b].repeat_interleave(8, 1).repeat_interleave(8, 2)  # nearest x8
        want[b] = _probs(model, x[b] * up[:, None], int(targets[b]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_score_masks_owner_form_matches_shared_form() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=3)
    targets = torch.tensor([0, 2, 4])
    masks = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(2))
    full = score_masks(adapter, x, targets, masks, batch_size=5)  # 3 x 4
    owner = torch.tensor([2, 0, 0, 1, 2])
    which = torch.tensor([1, 3, 0, 2, 2])
    got = score_masks(adapter, x, targets, masks[which], owner=owner, batch_size=2)
    torch.testing.assert_close(got, full[owner, which])


@pytest.mark.parametrize(
    ("owner", "message"),
    [
        (torch.tensor([0, 1]), "one image per mask"),
        (torch.tensor([0, 1, 2]), r"0 \.\. 1"),
        (torch.tensor([0.0, 1.0, 1.0]), "integer"),
    ],
)
def test_score_masks_bad_owner(owner: torch.Tensor, message: str) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=2)
    with pytest.raises(xvit.InvalidInputError, match=message):
        score_masks(
            xvit.get_adapter(model), x, torch.tensor([0, 0]), torch.ones(3, 4, 4), owner=owner
        )


def test_sum_weighted_masks_matches_one_shot() -> None:
    model = MODEL_FACTORIES["timm-vit-rect"]()
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=2)
    targets = torch.tensor([0, 1])
    masks = torch.rand(10, 24, 40, generator=torch.Generator().manual_seed(3))
    total, count = sum_weighted_masks(adapter, x, targets, iter(masks.split(4)), batch_size=3)
    probs = score_masks(adapter, x, targets, masks)
    assert count == 10
    torch.testing.assert_close(total, torch.einsum("bk,khw->bhw", probs, masks))
    with pytest.raises(xvit.InvalidInputError, match="empty"):
        sum_weighted_masks(adapter, x, targets, iter([]))


# --- RISE ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (24, 40), (30, 17)])
@pytest.mark.parametrize("grid_size", [1, 3, 8])
def test_rise_masks_match_skimage_style_resize(size: tuple[int, int], grid_size: int) -> None:
    """Petsiuk et al. upsample with skimage.transform.resize(order=1, mode="reflect",
    anti_aliasing=False), which is scipy.ndimage.zoom(order=1, mode="mirror", grid_mode=True),
    then crop at a random shift."""
    from scipy import ndimage

    rise = RISE(num_masks=6, grid_size=grid_size, keep_prob=0.5, seed=4)
    grids, shifts = rise.draw(size)
    masks = rise.masks_from(grids, shifts, size)
    cell = [int(np.ceil(n / grid_size)) for n in size]
    up = [(grid_size + 1) * c for c in cell]
    assert masks.shape == (6, *size)
    assert set(np.unique(grids.numpy())) <= {0.0, 1.0}
    for i in range(6):
        sy, sx = int(shifts[i, 0]), int(shifts[i, 1])
        assert 0 <= sy < cell[0] and 0 <= sx < cell[1]
        zoomed = ndimage.zoom(
            grids[i].double().numpy(),
            (up[0] / grid_size, up[1] / grid_size),
            order=1,
            mode="mirror",
            grid_mode=True,
        )
        assert zoomed.shape == tuple(up)
        want = zoomed[sy : sy + size[0], sx : sx + size[1]]
        np.testing.assert_allclose(masks[i].numpy(), want, atol=1e-6)


def test_rise_matches_reference_loop() -> None:
    model = MODEL_FACTORIES["timm-vit-registers"]()
    x = model_input(model, batch=2)
    targets = [3, 0]
    rise = RISE(num_masks=64, grid_size=4, keep_prob=0.3, seed=5, fill=0.7, batch_size=20)
    got = xvit.explain(rise, model, x, target=targets).map
    masks = rise.masks((32, 32))
    want = torch.zeros(2, 32, 32)
    for b in range(2):
        p = _probs(model, x[b] * masks[:, None] + 0.7 * (1 - masks[:, None]), targets[b])
        for i in range(64):
            want[b] += p[i] * masks[i]
    want /= 64 * 0.3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_rise_seed_reproducible_and_independent_of_batching() -> None:
    model = MODEL_FACTORIES["hf-vit"]()
    x = model_input(model, batch=2)
    a = xvit.explain("rise", model, x, num_masks=40, seed=7, batch_size=64).map
    b = xvit.explain("rise", model, x, num_masks=40, seed=7, batch_size=7).map
    alone = xvit.explain("rise", model, x[1:], num_masks=40, seed=7).map
    other = xvit.explain("rise", model, x, num_masks=40, seed=8).map
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:], alone)
    assert not torch.allclose(a, other)


def test_rise_seed_none_follows_torch_global_rng() -> None:
    rise = RISE(num_masks=5, seed=None)
    torch.manual_seed(11)
    first = rise.masks((32, 32))
    torch.manual_seed(11)
    again = rise.masks((32, 32))
    fresh = rise.masks((32, 32))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, fresh)


def test_rise_makes_masks_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    sizes: list[int] = []
    original = RISE.masks_from

    def spy(self: RISE, grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]):
        sizes.append(int(grids.shape[0]))
        return original(self, grids, shifts, size)

    monkeypatch.setattr(RISE, "masks_from", spy)
    xvit.explain("rise", model, model_input(model, batch=1), num_masks=50, batch_size=16)
    assert sizes == [16, 16, 16, 2]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"keep_prob": 0}, "keep_prob"),
        ({"keep_prob": 1.5}, "keep_prob"),
        ({"num_masks": 0}, "num_masks"),
        ({"grid_size": 2.5}, "grid_size"),
        ({"seed": -1}, "seed"),
        ({"seed": "a"}, "seed"),
        ({"fill": "black"}, "fill"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_rise_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(xvit.ParameterError, match=message):
        RISE(**params)


# --- ViT-CX -------------------------------------------------------------------------------
def _first_appearance(labels: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(v), len(order)) for v in labels])


@pytest.mark.parametrize(("name", "threshold"), [("timm-vit", 0.1), ("timm-vit-registers", 0.2)])
def test_vitcx_clusters_match_sklearn(name: str, threshold: float) -> None:
    """Feature maps read with a plain hook, resized with torchvision, clustered by
    scikit-learn's AgglomerativeClustering as the authors do."""
    from sklearn.cluster import AgglomerativeClustering
    from torchvision.transforms import Resize

    model = MODEL_FACTORIES[name]()
    x = model_input(model, batch=2)
    seen: list[torch.Tensor] = []
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    prefix = int(model.num_prefix_tokens)
    ours = ViTCX(distance_threshold=threshold).cluster_masks(xvit.get_adapter(model), x)
    for b in range(2):
        feats = seen[0][b, prefix:, :].T.reshape(-1, 4, 4)  # D x h x w
        maps = Resize((32, 32))(feats).reshape(feats.shape[0], -1).double()
        lo, hi = maps.min(1, keepdim=True).values, maps.max(1, keepdim=True).values
        maps = (maps - lo) / (hi - lo)
        unit = maps / maps.norm(dim=1, keepdim=True)
        dist = (1 - unit @ unit.T).clamp_min(0).numpy()
        np.fill_diagonal(dist, 0)
        labels = (
            AgglomerativeClustering(
                n_clusters=None,
                distance_threshold=threshold,
                metric="precomputed",
                linkage="complete",
            )
            .fit(dist)
            .labels_
        )
        labels = _first_appearance(labels)
        k = labels.max() + 1
        assert 1 < k < feats.shape[0], "degenerate check: clustering merged nothing or all"
        sums = torch.stack([maps[torch.as_tensor(labels == c)].sum(0) for c in range(k)])
        lo, hi = sums.min(1, keepdim=True).values, sums.max(1, keepdim=True).values
        want = ((sums - lo) / (hi - lo)).reshape(k, 32, 32)
        assert ours[b].shape == want.shape
        torch.testing.assert_close(ours[b].double(), want, rtol=1e-5, atol=1e-5)


def test_vitcx_threshold_zero_keeps_every_feature_map() -> None:
    model = MODEL_FACTORIES["hf-deit"]()
    clusters = ViTCX(distance_threshold=0).cluster_masks(
        xvit.get_adapter(model), model_input(model)
    )
    assert [len(c) for c in clusters] == [32, 32]


@pytest.mark.parametrize("name", ["timm-vit", "timm-vit-rect"])
def test_vitcx_matches_reference_given_clusters_and_noise(name: str) -> None:
    model = MODEL_FACTORIES[name]()
    x = model_input(model, batch=2)
    targets = [1, 4]
    vitcx = ViTCX(seed=3, batch_size=9, distance_threshold=0.2)
    got = xvit.explain(vitcx, model, x, target=targets).map
    clusters = vitcx.cluster_masks(xvit.get_adapter(model), x)
    for b in range(2):
        masks = clusters[b]
        k = len(masks)
        noise = vitcx.noise(torch.arange(k), tuple(x.shape[1:]))
        outside = noise * (1 - masks[:, None])
        p_clean = _probs(model, x[b : b + 1], targets[b])[0]
        p_masked = _probs(model, x[b] * masks[:, None] + outside, targets[b])
        p_noisy = _probs(model, x[b] + outside, targets[b])
        want = torch.zeros(x.shape[-2:])
        coverage = masks.sum(0)
        for i in range(k):
            want += (p_masked[i] - p_noisy[i] + p_clean) * masks[i]
        want = torch.where(coverage > 0, want / coverage, 0.0) / k
        torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-6)


def test_vitcx_noise_is_gaussian_per_mask_and_seeded() -> None:
    vitcx = ViTCX(seed=9)
    noise = vitcx.noise(torch.arange(8), (3, 32, 32))
    assert abs(float(noise.std()) - 0.1) < 0.005
    assert abs(float(noise.mean())) < 0.005
    assert not torch.allclose(noise[0], noise[1])
    # mask k's noise depends on (seed, k) only: asking for it alone gives the same draw
    torch.testing.assert_close(vitcx.noise(torch.tensor([5]), (3, 32, 32))[0], noise[5])
    assert not torch.allclose(ViTCX(seed=10).noise(torch.arange(1), (3, 32, 32)), noise[:1])


def test_vitcx_reproducible_and_batch_equivalent() -> None:
    model = MODEL_FACTORIES["hf-deit-teacher"]()
    x = model_input(model, batch=2)
    a = xvit.explain("vitcx", model, x, seed=1).map
    b = xvit.explain("vitcx", model, x, seed=1, batch_size=5).map
    alone = xvit.explain("vitcx", model, x[1:], seed=1).map
    other = xvit.explain("vitcx", model, x, seed=2).map
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:], alone)
    assert not torch.allclose(a, other)


def test_vitcx_combine_analytic_with_uncovered_pixels() -> None:
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    out = combine(masks, torch.tensor([2.0, 4.0]))
    # pixel (0,0): (2 + 4) / 2 / K; pixel (0,1): 4 / 1 / K; bottom row uncovered -> 0
    torch.testing.assert_close(out, torch.tensor([[1.5, 2.0], [0.0, 0.0]]))


def test_vitcx_constant_feature_map_gives_zero_mask() -> None:
    from xvit.methods.vitcx import minmax_rows

    out = minmax_rows(torch.tensor([[3.0, 3.0, 3.0], [1.0, 2.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 1.0]]))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"distance_threshold": -0.1}, "distance_threshold"),
        ({"distance_threshold": "0.1"}, "distance_threshold"),
        ({"noise_std": -1}, "noise_std"),
        ({"seed": 1.5}, "seed"),
        ({"layer": "last"}, "layer"),
        ({"batch_size": -2}, "batch_size"),
    ],
)
def test_vitcx_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(xvit.ParameterError, match=message):
        ViTCX(**params)


@pytest.mark.parametrize("method", ["rise", "vitcx"])
def test_randomized_flag(method: str) -> None:
    cls = xvit.get_method(method)
    assert cls.randomized
    assert "seed" in cls.param_names()
