"""After any call, normal or raising, the model is exactly as it was."""

from __future__ import annotations

import pytest
import torch

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot


def _dirty(model: torch.nn.Module) -> None:
    """Give the model state a careless library could lose: train mode, grads, frozen params."""
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.25)


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
def test_normal_call_leaves_model_untouched(model_name: str) -> None:
    model = MODEL_FACTORIES[model_name]()
    _dirty(model)
    before = snapshot(model)
    xvit.explain("gradmask", model, model_input(model), batch_size=7)
    assert snapshot(model) == before


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
def test_raising_calls_leave_model_untouched(model_name: str) -> None:
    model = MODEL_FACTORIES[model_name]()
    _dirty(model)
    before = snapshot(model)
    x = model_input(model)
    with pytest.raises(xvit.InvalidInputError):
        xvit.explain("gradmask", model, x, target=10_000)
    with pytest.raises(xvit.ParameterError):
        xvit.explain("gradmask", model, x, masks_per_layer=7)
    with pytest.raises(xvit.ParameterError):
        xvit.explain("gradmask", model, x, no_such_param=1)
    assert snapshot(model) == before


def test_model_raising_mid_call_restores_everything(timm_vit: torch.nn.Module) -> None:
    model = timm_vit
    _dirty(model)
    before = snapshot(model)
    calls = {"n": 0}

    def explode(_module: torch.nn.Module, _inp: object, _out: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # after the capture forward, inside the masked scoring
            raise RuntimeError("boom")

    handle = model.blocks[1].register_forward_hook(explode)
    try:
        before = snapshot(model)
        with pytest.raises(xvit.ModelOutputError, match=r"gradmask: .*RuntimeError: boom") as info:
            xvit.explain("gradmask", model, model_input(model))
        assert calls["n"] == 3  # it did fail inside the masked scoring
        assert isinstance(info.value.__cause__, RuntimeError)  # the model's error is chained
        assert snapshot(model) == before
    finally:
        handle.remove()


def test_eval_mode_used_during_explanation(timm_vit: torch.nn.Module) -> None:
    seen = []
    timm_vit.train()
    h = timm_vit.register_forward_hook(lambda m, i, o: seen.append(m.training))
    try:
        xvit.explain("gradmask", timm_vit, model_input(timm_vit))
    finally:
        h.remove()
    assert seen and not any(seen)
    assert timm_vit.training
