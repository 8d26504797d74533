"""The transformers 4.x layouts of the HF families of issue 14, checked as test_families.py
checks them under 5.x: HF DINOv2 (with registers where the installed 4.x has it) and
``xvit.zero_shot`` over CLIP and SigLIP.

In 4.x, DINOv2 layers read ``encoder.layer[i].attention.attention.query``, and the CLIP and
SigLIP towers are the model's ``vision_model`` itself (``CLIPVisionTransformer``). Each
attention class was chosen when the model was built (SDPA by default), and the SDPA classes
fall back to the eager code, which returns the probabilities, only when the forward asks for
attentions: xvit's eager path asks through each config's ``output_attentions``.

The tiny models and the oracles (the model's own ``output_attentions``, the per-image
GradMask reference) are those of family_models.py and test_families.py; most checks here run
the 5.x tests' own bodies on the 4.x models. Marked ``transformers4``: skipped under 5.x
(conftest.py), run by .ci/run in its transformers 4 environment.
"""

from __future__ import annotations

import pytest
import test_families as families
import test_zero_shot as zero_shot_tests
import torch
from family_models import FAMILY_FACTORIES, PROBABILITIES, hf_image_text, zero_shot_text_features
from torch import nn

import xvit
from model_state import snapshot
from xvit.models import Capture

pytestmark = pytest.mark.transformers4

#: family -> (4.x vision tower or backbone attribute, prefix tokens, pooling)
LAYOUTS = {
    "hf-dinov2": ("Dinov2Model", 1, "token+mean"),
    "hf-dinov2-registers": ("Dinov2WithRegistersModel", 5, "token+mean"),
    "hf-clip-zero-shot": ("CLIPVisionTransformer", 1, "token"),
    "hf-siglip-zero-shot": ("SiglipVisionTransformer", 0, "attention-pool"),
}
FAMILIES = sorted(LAYOUTS)
ZERO_SHOT = {"hf-clip-zero-shot": "clip", "hf-siglip-zero-shot": "siglip"}


def _require(family: str) -> None:
    import transformers

    if family == "hf-dinov2-registers" and not hasattr(transformers, "Dinov2WithRegistersConfig"):
        pytest.skip(
            f"transformers {transformers.__version__} has no Dinov2WithRegisters (added in 4.48)"
        )


def _backbone(model: nn.Module) -> nn.Module:
    for name in ("dinov2", "dinov2_with_registers", "vision_model"):
        if hasattr(model, name):
            return getattr(model, name)
    raise AssertionError(f"{type(model).__name__} has no backbone")


def _config_flags(model: nn.Module) -> dict[str, tuple[object, object]]:
    """Each reachable config's attention implementation and ``output_attentions``."""
    return {
        name: (m.config._attn_implementation, m.config.output_attentions)
        for name, m in model.named_modules()
        if hasattr(getattr(m, "config", None), "_attn_implementation")
    }


def _input(model: nn.Module) -> torch.Tensor:
    return families._input(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_4x_layout_and_geometry(family: str) -> None:
    _require(family)
    model = FAMILY_FACTORIES[family]()
    backbone = _backbone(model)
    tower, prefix, pooling = LAYOUTS[family]
    assert type(backbone).__name__ == tower
    if family.startswith("hf-dinov2"):
        keys = set(backbone.state_dict())
        assert "encoder.layer.0.attention.attention.query.weight" in keys
    adapter = xvit.get_adapter(model)
    geo = adapter.geometry
    assert (geo.num_blocks, geo.num_heads, geo.hidden_size) == (3, 2, 32)
    assert geo.num_prefix_tokens == prefix and adapter.pooling == pooling  # type: ignore[attr-defined]
    assert geo.grid() == (4, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_logits_equal_the_models(family: str) -> None:
    _require(family)
    families.test_forward_logits_equal_the_model(family)
    if family in ZERO_SHOT:  # the wrapped model's own logits_per_image, from text features
        zero_shot_tests._check_logits_equal(zero_shot_tests.FACTORIES[ZERO_SHOT[family]]())
    else:
        model = FAMILY_FACTORIES[family]()
        x = _input(model)
        with torch.no_grad():
            own = model(pixel_values=x).logits
            torch.testing.assert_close(xvit.get_adapter(model).forward_logits(x), own)


@pytest.mark.parametrize("kind", sorted(zero_shot_tests.FACTORIES))
def test_zero_shot_from_prompts_and_a_tokenizer(kind: str) -> None:
    model = zero_shot_tests.FACTORIES[kind]()
    zero_shot_tests.test_prompts_and_tokenizer_give_the_text_tower_features(model, False)


@pytest.mark.parametrize("kind", sorted(zero_shot_tests.FACTORIES))
def test_zero_shot_refuses_the_4x_vision_tower(kind: str) -> None:
    zero_shot_tests.test_a_vision_tower_alone_is_refused_with_the_model_to_load(
        zero_shot_tests.FACTORIES[kind]()
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_probabilities_equal_output_attentions(family: str) -> None:
    _require(family)
    model = FAMILY_FACTORIES[family]()
    adapter = xvit.get_adapter(model)
    x = _input(model)
    own = PROBABILITIES[family](model, x)
    before, flags = snapshot(model), _config_flags(model)
    with torch.no_grad():
        adapter.forward_logits(x)  # the plain forward stays on the model's SDPA class
        with adapter.eager_attention(), Capture(adapter, attention=True) as cap:
            adapter.forward_logits(x)
    captured = cap.attentions()
    assert snapshot(model) == before and _config_flags(model) == flags  # all restored
    n = LAYOUTS[family][1] + 16
    assert len(captured) == len(own) == 3
    for a, b in zip(captured, own):
        assert a.shape == (2, 2, n, n)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    families.test_attention_and_rollout_match_the_models_probabilities(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradmask_equals_the_reference(family: str) -> None:
    _require(family)
    families.test_gradmask_matches_hybrid_reference(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_runs_and_leaves_the_model_untouched(family: str) -> None:
    _require(family)
    families.test_every_method_runs_and_leaves_the_model_untouched(family)


@pytest.mark.parametrize("kind", sorted(zero_shot_tests.FACTORIES))
def test_the_users_full_model_keeps_its_configs(kind: str) -> None:
    model = hf_image_text(kind)
    classifier = xvit.zero_shot(model, text_features=zero_shot_text_features(model))
    before, flags = snapshot(model), _config_flags(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method in ("attention", "rollout", "gae", "gradmask"):
        assert torch.isfinite(xvit.explain(method, classifier, x).map).all(), method
        assert snapshot(model) == before, method
        assert _config_flags(model) == flags, method
