"""Grad-CAM against pytorch-grad-cam's ``GradCAM`` (the peer implementation), before its
min-max scaling and resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from xvit.methods.gradcam import GradCAM

pytest.importorskip("pytorch_grad_cam")


class _Logits(nn.Module):
    """A HuggingFace classifier as a plain tensor-returning module, for pytorch-grad-cam."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _peer_cam(
    monkeypatch: pytest.MonkeyPatch,
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    targets: list[int],
    prefix: int,
    grid: tuple[int, int],
) -> np.ndarray:
    """pytorch-grad-cam's GradCAM, run through its own orchestration (hooks, targets,
    backward, weights, ReLU) with its min-max scaling/resizing switched off."""
    import pytorch_grad_cam.base_cam as base_cam
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    monkeypatch.setattr(base_cam, "scale_cam_image", lambda cam, target_size=None: cam)
    gh, gw = grid

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)

    with PeerGradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        out = cam(x, [ClassifierOutputTarget(t) for t in targets])
    return np.asarray(out)


def _close(ours: torch.Tensor, peer: np.ndarray) -> None:
    ours_np = ours.detach().cpu().numpy().astype(np.float64)
    peer = peer.astype(np.float64)
    assert ours_np.shape == peer.shape
    assert np.abs(peer).max() > 0, "degenerate check: the peer map is all zero"
    np.testing.assert_allclose(ours_np, peer, rtol=1e-5, atol=1e-5 * np.abs(peer).max())


@pytest.mark.parametrize(
    "name", ["timm-vit", "timm-vit-registers", "timm-deit-distilled", "timm-vit-rect"]
)
def test_matches_pytorch_grad_cam_timm(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = MODEL_FACTORIES[name]()
    x = model_input(model, batch=3)
    targets = [0, 3, 1]
    prefix = int(model.num_prefix_tokens)  # read from timm, independent of xvit's adapter
    grid = tuple(model.patch_embed.grid_size)
    ours = xvit.explain("gradcam", model, x, target=targets).map
    peer = _peer_cam(monkeypatch, model, model.blocks[-1].norm1, x, targets, prefix, grid)
    _close(ours, peer)


@pytest.mark.parametrize("name", ["hf-vit", "hf-deit-teacher"])
def test_matches_pytorch_grad_cam_hf(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = MODEL_FACTORIES[name]()
    x = model_input(model, batch=2)
    targets = [2, 4]
    backbone = model.vit if hasattr(model, "vit") else model.deit
    layers = getattr(backbone, "layers", None) or backbone.encoder.layer
    prefix = 2 if getattr(backbone.embeddings, "distillation_token", None) is not None else 1
    side = model.config.image_size // model.config.patch_size
    ours = xvit.explain("gradcam", model, x, target=targets).map
    peer = _peer_cam(
        monkeypatch, _Logits(model), layers[-1].layernorm_before, x, targets, prefix, (side, side)
    )
    _close(ours, peer)


def test_layer_index_and_module_agree_with_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=2)
    by_index = xvit.explain("gradcam", model, x, target=1, layer=1).map
    by_negative = xvit.explain("gradcam", model, x, target=1, layer=-2).map
    by_module = xvit.explain("gradcam", model, x, target=1, layer=model.blocks[1].norm1).map
    torch.testing.assert_close(by_index, by_module)
    torch.testing.assert_close(by_negative, by_module)
    peer = _peer_cam(monkeypatch, model, model.blocks[1].norm1, x, [1, 1], 1, (4, 4))
    _close(by_index, peer)
    # a different layer really is a different map
    assert not torch.allclose(by_index, xvit.explain("gradcam", model, x, target=1).map)


def test_default_target_is_predicted_class() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=2)
    with torch.no_grad():
        pred = model(x).argmax(-1).tolist()
    torch.testing.assert_close(
        xvit.explain("gradcam", model, x).map, xvit.explain("gradcam", model, x, target=pred).map
    )


def test_model_left_untouched() -> None:
    model = MODEL_FACTORIES["timm-vit-registers"]()
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    hooks = xvit.hook_counts(model)
    xvit.explain("gradcam", model, model_input(model))
    assert xvit.hook_counts(model) == hooks
    assert all(p.grad is None for p in model.parameters())
    assert not model.blocks[0].attn.qkv.weight.requires_grad
    assert model.blocks[0].attn.qkv.bias.requires_grad


@pytest.mark.parametrize("layer", ["norm1", 1.5, True, [0]])
def test_bad_layer_type(layer: object) -> None:
    with pytest.raises(xvit.ParameterError, match="layer must be None"):
        GradCAM(layer=layer)


def test_layer_out_of_range() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    with pytest.raises(xvit.ParameterError, match=r"out of range .* 3 blocks"):
        xvit.explain("gradcam", model, model_input(model), layer=3)


def test_layer_from_another_model() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    other = MODEL_FACTORIES["timm-vit"]()
    with pytest.raises(xvit.ParameterError, match="not a submodule"):
        xvit.explain("gradcam", model, model_input(model), layer=other.blocks[-1].norm1)


def test_layer_without_token_output() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    with pytest.raises(xvit.CaptureError, match="token sequence"):
        xvit.explain("gradcam", model, model_input(model), layer=model.head)
