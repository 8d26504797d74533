"""Explaining ``xvit.zero_shot`` classifiers over HF CLIP and SigLIP: the user's full model
(text tower, configs, flags) is left exactly as it was, the adapter reads the vision tower's
layout, and what xvit cannot read is refused clearly. The method contract, GradMask and the
attention references run in test_families.py over the same factories; open_clip classifiers
are tested in test_open_clip.py."""

from __future__ import annotations

import pytest
import torch
from family_models import hf_image_text, zero_shot_text_features
from test_contract import refused_clearly
from torch import nn

import xvit
from model_state import snapshot


def _attn_implementations(model: nn.Module) -> dict[str, object]:
    return {
        name: m.config._attn_implementation
        for name, m in model.named_modules()
        if hasattr(getattr(m, "config", None), "_attn_implementation")
    }


@pytest.mark.parametrize(
    ("kind", "prefix", "pooling"), [("clip", 1, "token"), ("siglip", 0, "attention-pool")]
)
def test_every_method_leaves_the_users_model_untouched(
    kind: str, prefix: int, pooling: str
) -> None:
    model = hf_image_text(kind)
    model.text_model.train()  # mixed modes survive
    classifier = xvit.zero_shot(model, text_features=zero_shot_text_features(model))
    adapter = xvit.get_adapter(classifier)
    assert type(adapter) is xvit.models.HFZeroShotAdapter
    assert (adapter.geometry.num_prefix_tokens, adapter.pooling) == (prefix, pooling)
    before, implementations = snapshot(model), _attn_implementations(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method in xvit.list_methods():
        cls = xvit.get_method(method)
        params = dict(cls.quick_params, **({"seed": 0} if cls.randomized else {}))
        if refused_clearly(cls, classifier, x, params):  # lacks what the method needs
            assert snapshot(model) == before, method
            continue
        assert torch.isfinite(xvit.explain(method, classifier, x, **params).map).all(), method
        assert snapshot(model) == before, method
        assert _attn_implementations(model) == implementations, method


def test_prompts_are_the_class_names() -> None:
    model = hf_image_text("clip")
    prompts = ["a cat", "a dog", "a car"]
    classifier = xvit.zero_shot(model, text_features=zero_shot_text_features(model, 3))
    classifier.class_names = prompts
    x = torch.randn(1, 3, 32, 32)
    e = xvit.explain("gradmask", classifier, x, target="a dog")
    assert int(e.targets[0]) == 1 and list(e.class_names) == ["a dog"]
    assert xvit.get_adapter(classifier).class_names() == tuple(prompts)
