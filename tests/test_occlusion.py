"""Occlusion equals Captum's ``Occlusion`` at pixel level (windows and strides of whole
patches, over every channel, the same baseline, the softmax probability of the target),
averaged over each patch's pixels."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.data import get_dataset
from xvit.methods.occlusion import Occlusion


def captum_patch_map(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    window: int,
    stride: int,
    baseline: float,
) -> torch.Tensor:
    """Captum's pixel attributions, pooled (mean over channels and pixels) to the patches."""
    ph, pw = xvit.get_adapter(model).geometry.patch_size
    c = x.shape[1]

    def probabilities(inp: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(inp), dim=1)

    with torch.no_grad():
        pixels = CaptumOcclusion(probabilities).attribute(
            x,
            sliding_window_shapes=(c, window * ph, window * pw),
            strides=(c, stride * ph, stride * pw),
            baselines=baseline,
            target=target,
            perturbations_per_eval=16,
        )
    return nn.functional.avg_pool2d(pixels.mean(dim=1, keepdim=True), (ph, pw))[:, 0]


def _digits(n: int) -> tuple[nn.Module, torch.Tensor]:
    model = xvit.load_model("xvit:digits-vit")
    pre = xvit.get_adapter(model).preprocessing
    data = get_dataset("digits", split="test", n=n)
    return model, torch.stack([pre(data[i].image) for i in range(n)])


@pytest.mark.parametrize(
    ("which", "window", "stride", "baseline"),
    [
        ("digits", 1, 1, 0.0),  # one patch at a time (the default)
        ("digits", 3, 2, 0.5),  # the last window of a row is cut at the border
        ("timm-vit", 2, 1, 0.0),
        ("timm-vit-rect", 2, 2, -1.0),  # a 3 x 5 grid
    ],
)
def test_occlusion_equals_captum(which: str, window: int, stride: int, baseline: float) -> None:
    if which == "digits":
        model, x = _digits(1)  # Captum on 64 x 64 pixels: one image is enough
    else:
        model = MODEL_FACTORIES[which]()
        x = model_input(model, batch=2)
    target = torch.tensor([3, 1])[: len(x)]
    before = snapshot(model)
    method = Occlusion(window=window, stride=stride, baseline=baseline, batch_size=13)
    ours = method.attribute(model, x, target)
    assert snapshot(model) == before
    ref = captum_patch_map(model, x, target, window, stride, baseline)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_occlusion_windows_cost_and_refusals() -> None:
    geo = xvit.get_adapter(MODEL_FACTORIES["timm-vit-rect"]()).geometry  # 3 x 5 patches
    assert Occlusion().cost(geo, (24, 40)).forwards == 1 + 15
    assert Occlusion(window=2, stride=2).cost(geo, (24, 40)).forwards == 1 + 2 * 3
    assert Occlusion(window=2).windows((3, 5)).shape == (8, 3, 5)
    with pytest.raises(xvit.ParameterError, match="stride"):
        Occlusion(window=1, stride=2)
    model = MODEL_FACTORIES["timm-vit"]()  # 4 x 4 patches
    with pytest.raises(xvit.InvalidInputError, match="does not fit"):
        Occlusion(window=5).attribute(model, model_input(model, batch=1), torch.tensor([0]))


def test_occlusion_against_a_logit_with_a_score_function() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=1)
    ours = Occlusion(window=2).attribute(model, x, lambda z: z[:, 2])
    with torch.no_grad():
        pixels = CaptumOcclusion(model).attribute(
            x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), target=2
        )
    ref = nn.functional.avg_pool2d(pixels.mean(dim=1, keepdim=True), 8)[:, 0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
