"""protocol="rise" and protocol="gradmask" against their authors' evaluation code.

Each reference below is re-written here, step by step, from the published code (nothing of
it is imported): RISE's ``evaluation.py`` (``gkern``, ``CausalMetric.single_run``, ``auc``)
with the substrates of ``Evaluation.ipynb``, and GradMask's ``modify_image``,
``get_insertion_deletion`` and ``plot_auc_line``. They run at 64 px (the shipped digits
model) and 224 px (a tiny timm ViT), on tie-free maps (random values per input pixel) and on
heavily tied maps (GradMask maps of the digits model, 8 x 8 patches upsampled), for every
substrate the authors use.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from scipy.ndimage import gaussian_filter

import xvit
from xvit.data import get_dataset
from xvit.metrics import Deletion, Insertion

TOL = 1e-6
GRADMASK_PERCENTAGES = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


@functools.cache
def digits() -> tuple[torch.nn.Module, torch.Tensor, list[int], torch.Tensor]:
    """The shipped digits model, 2 held-out digits, their labels and GradMask maps."""
    model = xvit.load_model("xvit:digits-vit")
    data = get_dataset("digits", split="test", n=2)
    labels = [d.label for d in data]
    e = xvit.explain("gradmask", model, [d.image for d in data], target=labels)
    return model, e.inputs, labels, e.map


@functools.cache
def vit224() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=5,
        embed_dim=32,
        depth=1,
        num_heads=2,
    ).eval()


def case(size: int, maps: str) -> tuple[torch.nn.Module, torch.Tensor, list[int], torch.Tensor]:
    """(model, x, targets, maps) at 64 px (2 digits) or 224 px (1 image), maps tie-free or tied."""
    model, x, labels, tied = digits()
    if size == 224:
        model = vit224()
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        labels, tied = [1], tied[:1]
    if maps == "tied":
        assert len(torch.unique(tied[0])) < tied[0].numel()  # the digits maps do repeat
        return model, x, labels, tied
    g = torch.Generator().manual_seed(size)
    return model, x, labels, torch.rand(len(labels), size, size, generator=g)


def upsampled(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Both codes bring the map to the image size with nearest interpolation (float32)."""
    return F.interpolate(maps.float().unsqueeze(1), size=(size, size), mode="nearest")[:, 0]


def probability(model: torch.nn.Module, x: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(x), dim=1)[0, target])


# --------------------------------------------------------------------------------------------
# RISE, evaluation.py


def rise_gkern(klen: int, nsig: float, channels: int) -> torch.Tensor:
    """gkern: gaussian_filter of a delta, one copy per channel on the diagonal, float32."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    k = gaussian_filter(delta, nsig)
    kern = np.zeros((channels, channels, klen, klen))
    for c in range(channels):
        kern[c, c] = k
    return torch.from_numpy(kern.astype("float32"))


def rise_single_run(model, img, explanation, target, step, substrate_fn, mode):
    """CausalMetric.single_run for one image (the model's softmax, the given target)."""
    _, c, h, w = img.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = img.clone(), substrate_fn(img)
    else:
        start, finish = substrate_fn(img), img.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        scores[i] = probability(model, start, target)
        if i < n_steps:
            coords = salient_order[:, step * i : step * (i + 1)]
            start.numpy().reshape(1, c, hw)[0, :, coords] = finish.numpy().reshape(1, c, hw)[
                0, :, coords
            ]
    return scores


def rise_auc(arr: np.ndarray) -> float:
    return float((arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1))


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("maps", ["free", "tied"])
@pytest.mark.parametrize("substrate", ["blur", "zero"])
def test_rise_protocol_equals_rise_code(size: int, maps: str, substrate: str) -> None:
    model, x, targets, sal = case(size, maps)
    step = size * 8 if size == 64 else size * 16  # few steps keep the test fast
    kern = rise_gkern(11, 5, x.shape[1])
    substrates = {
        "blur": lambda t: F.conv2d(t, kern, padding=11 // 2),
        "zero": torch.zeros_like,
    }
    explanations = upsampled(sal, size).numpy()
    for metric, mode in ((Insertion, "ins"), (Deletion, "del")):
        res = metric(protocol="rise", substrate=substrate, step=step)(model, x, targets, sal)
        for i, target in enumerate(targets):
            ref = rise_single_run(
                model,
                x[i : i + 1].clone(),
                explanations[i],
                target,
                step,
                substrates[substrate],
                mode,
            )
            np.testing.assert_allclose(res.curves[i].numpy(), ref, atol=TOL, rtol=0)
            assert abs(res.scores[i].item() - rise_auc(ref)) < TOL


def test_rise_order_is_not_raster_order_on_tied_maps() -> None:
    # the reference order matters: on the tied digits maps it moves the curve
    model, x, targets, sal = case(64, "tied")
    rise = Deletion(protocol="rise")(model, x, targets, sal)
    raster = Deletion(protocol="rise", ties="raster")(model, x, targets, sal)
    assert (rise.curves - raster.curves).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# GradMask, GradMask.py and utils.py


def gradmask_modify(operation, heatmap, img, percentage, baseline):
    """modify_image: the top int(p * H * W) pixels of np.argsort(heatmap.ravel())."""
    num_top_pixels = int(percentage * heatmap.shape[0] * heatmap.shape[1])
    top = np.unravel_index(np.argsort(heatmap.numpy().ravel())[-num_top_pixels:], heatmap.shape)
    if baseline == "black":
        base = torch.zeros(img.shape, dtype=torch.bool)
    elif baseline == "blur":
        base = TF.gaussian_blur(img, kernel_size=[15, 15], sigma=[7, 7])
    elif baseline == "random":
        base = torch.randn_like(img)
    else:
        base = torch.ones_like(img) * img.mean()
    mask = torch.zeros(heatmap.shape, dtype=torch.bool)
    mask[top] = 1
    if operation == "deletion":
        return torch.where(mask > 0, base, img)
    return torch.where(mask > 0, img, base)


def gradmask_confidences(model, img, heatmap, target, baseline, operation, seed):
    """get_insertion_deletion for one operation; the global generator seeded first."""
    torch.manual_seed(seed)
    batch = torch.stack(
        [gradmask_modify(operation, heatmap, img, p / 100, baseline) for p in GRADMASK_PERCENTAGES]
    )
    with torch.no_grad():
        return torch.softmax(model(batch), dim=1)[:, target].numpy().astype(np.float64)


def sk_auc(x: list[float], y: np.ndarray) -> float:
    """sklearn.metrics.auc on increasing x: the trapezoidal rule."""
    xs = np.asarray(x, dtype=np.float64)
    return float(np.sum((xs[1:] - xs[:-1]) * (y[1:] + y[:-1]) / 2))


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("maps", ["free", "tied"])
@pytest.mark.parametrize("baseline", ["black", "blur", "mean", "random"])
def test_gradmask_protocol_equals_gradmask_code(size: int, maps: str, baseline: str) -> None:
    model, x, targets, sal = case(size, maps)
    heatmaps = upsampled(sal, size)
    seeds = [11, 12][: len(targets)]
    for metric, operation in ((Insertion, "insertion"), (Deletion, "deletion")):
        res = metric(protocol="gradmask", substrate=baseline)(model, x, targets, sal, seeds=seeds)
        for i, target in enumerate(targets):
            ref = gradmask_confidences(
                model, x[i], heatmaps[i], target, baseline, operation, seeds[i]
            )
            np.testing.assert_allclose(res.curves[i].numpy(), ref, atol=TOL, rtol=0)
            if operation == "insertion":
                auc = sk_auc(GRADMASK_PERCENTAGES, ref)
            else:  # plot_auc_line: auc([0] + perc, [0] + scores_del)
                auc = sk_auc([0, *GRADMASK_PERCENTAGES], np.r_[0.0, ref])
            # the authors integrate over percentages; xvit reports the same area in [0, 1]
            assert abs(res.scores[i].item() - auc / 100) < TOL


def test_gradmask_pixel_counts_truncate() -> None:
    # int(p * H * W): 1 % of 64 x 64 is 40 pixels (40.96), 5 % is 204 (204.8)
    counts = Insertion(protocol="gradmask").counts(64, 64).tolist()
    assert counts == [int(p / 100 * 64 * 64) for p in GRADMASK_PERCENTAGES]
    assert counts[:2] == [40, 204]


# --------------------------------------------------------------------------------------------
# TIS, metrics/pointing_game.py (EnergyBasedPointingGame) and evaluate.py


def tis_energy(saliency: torch.Tensor, boxes: list, max_overlap: float = 0.5) -> float:
    """EnergyBasedPointingGame on a map already at the image's size."""
    h, w = saliency.shape[-2:]
    bboxes_map = torch.zeros((h, w))
    for xmin, ymin, xmax, ymax in boxes:
        bboxes_map[int(ymin) : int(ymax), int(xmin) : int(xmax)] = 1
    if bboxes_map.sum() / torch.ones((h, w)).sum() < max_overlap:
        inside = (saliency * bboxes_map).abs().sum()
        return float(inside / saliency.abs().sum())
    return float("nan")


def test_tis_protocol_equals_tis_energy_pointing_game() -> None:
    from torchvision.transforms import Resize

    from xvit.metrics import EnergyPointingGame

    maps = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(0))  # signed values
    boxes = [[(0, 0, 16, 16)], [(4, 8, 20, 30), (24, 0, 32, 8)], [(0, 0, 32, 16)], [(0, 0, 31, 17)]]
    x = torch.zeros(4, 3, 32, 32)
    res = EnergyPointingGame(protocol="tis")(None, x, [0] * 4, maps, boxes)
    resize = Resize((32, 32))  # evaluate.py's upsampling_fn
    for i in range(4):
        ref = tis_energy(resize(maps[i].reshape(1, 1, 4, 4))[0, 0], boxes[i])
        got = res.scores[i].item()
        assert (np.isnan(ref) and np.isnan(got)) or abs(got - ref) < 1e-6
    assert np.isnan(res.scores[2].item())  # exactly half the image: >= 50 %, undefined
    assert np.isnan(res.scores[3].item())  # more than half
    # the default protocol scores large boxes; the rule is an option of its own
    assert not np.isnan(EnergyPointingGame()(None, x, [0] * 4, maps, boxes).scores[2].item())
    own = EnergyPointingGame(max_box_fraction=0.5)(None, x, [0] * 4, maps, boxes)
    assert np.isnan(own.scores[2].item()) and not np.isnan(own.scores[0].item())
    with pytest.raises(xvit.ParameterError, match="max_box_fraction"):
        EnergyPointingGame(max_box_fraction=0)
