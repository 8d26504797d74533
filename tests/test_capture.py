"""The capture layer: ``Capture(adapter, attention=True)`` runs the model's eager attention path
for its block on its own, and puts the model's attention setting back afterwards."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import xvit
from conftest import DEPTH, HEADS, MODEL_FACTORIES, model_input
from xvit.models import Capture
from xvit.models._guard import attribute_switched


def _fused_model(name: str) -> nn.Module:
    """A tiny model whose own setting is a fused attention kernel (no probabilities)."""
    model = MODEL_FACTORIES[name]()
    if name.startswith("timm"):
        for block in model.blocks:
            block.attn.fused_attn = True
    else:
        model.config._attn_implementation = "sdpa"
    return model


def _setting(model: nn.Module) -> object:
    if hasattr(model, "config"):
        return model.config._attn_implementation
    return [block.attn.fused_attn for block in model.blocks]


def _eager(model: nn.Module) -> bool:
    if hasattr(model, "config"):
        return model.config._attn_implementation == "eager"
    return not any(block.attn.fused_attn for block in model.blocks)


@pytest.mark.parametrize("name", ["timm-vit", "hf-vit"])
def test_capture_of_attention_alone_yields_probabilities_and_restores(name: str) -> None:
    model = _fused_model(name)
    before, hooks = _setting(model), xvit.hook_counts(model)
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=2)
    with torch.no_grad(), Capture(adapter, attention=True) as cap:
        assert _eager(model)
        adapter.logits(x)
    attentions = cap.attentions()
    n = adapter.geometry.num_tokens()
    assert len(attentions) == DEPTH
    for probs in attentions:
        assert probs.shape == (2, HEADS, n, n)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, HEADS, n))
    assert _setting(model) == before
    assert xvit.hook_counts(model) == hooks


@pytest.mark.parametrize("name", ["timm-vit", "hf-vit"])
def test_capture_nests_inside_an_explicit_eager_attention(name: str) -> None:
    model = _fused_model(name)
    before = _setting(model)
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=1)
    with torch.no_grad(), adapter.eager_attention():
        with Capture(adapter, attention=True) as cap:
            adapter.logits(x)
        assert _eager(model)  # the inner exit leaves the outer switch on
        with Capture(adapter, attention=True) as again:
            adapter.logits(x)
    assert _setting(model) == before
    for first, second in zip(cap.attentions(), again.attentions()):
        torch.testing.assert_close(first, second)


@pytest.mark.parametrize("name", ["timm-vit", "hf-vit"])
def test_other_captures_leave_the_attention_setting_alone(name: str) -> None:
    model = _fused_model(name)
    before = _setting(model)
    adapter = xvit.get_adapter(model)
    with Capture(adapter, qkv=True):
        assert _setting(model) == before


def test_capture_failing_on_entry_restores_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fused_model("timm-vit")
    before = _setting(model)
    adapter = xvit.get_adapter(model)

    def broken() -> list:
        raise RuntimeError("no blocks today")

    monkeypatch.setattr(adapter, "blocks", broken)
    with pytest.raises(RuntimeError, match="no blocks today"), Capture(adapter, attention=True):
        pass
    assert _setting(model) == before
    free: list[bool] = []  # the lock is released: another thread gets it
    thread = threading.Thread(target=lambda: free.append(_try_lock(model)))
    thread.start()
    thread.join()
    assert free == [True]


def _try_lock(model: nn.Module) -> bool:
    lock = xvit.models.model_lock(model)
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


def test_attribute_switched_removes_an_attribute_the_object_lacked() -> None:
    model = nn.Linear(1, 1)
    parts = [SimpleNamespace(flag=True), SimpleNamespace()]
    with attribute_switched(model, parts, "flag", False):
        assert [p.flag for p in parts] == [False, False]
    assert parts[0].flag is True and not hasattr(parts[1], "flag")
