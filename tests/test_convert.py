"""timm <-> HuggingFace conversion: same logits, same GradMask maps, exact round trips."""

from __future__ import annotations

import pytest
import timm
import torch
from test_gradmask import spread_weights
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input

HF_TWIN = {
    "VisionTransformer": "ViTForImageClassification",
    "VisionTransformerDistilled": "DeiTForImageClassificationWithTeacher",
}


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _why_unsupported(model: nn.Module) -> str | None:
    """What in a factory model has no counterpart in the other library, read from the model."""
    if _is_timm(model):
        if model.num_reg_tokens:
            return "register tokens"
        if model.global_pool != "token":
            return "global_pool='avg'"
        return None
    if not hasattr(model, "distillation_classifier") and hasattr(model, "deit"):
        return "DeiTForImageClassification"
    return None


def _convert(model: nn.Module) -> nn.Module:
    return xvit.timm_to_hf(model) if _is_timm(model) else xvit.hf_to_timm(model)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x) if _is_timm(model) else model(pixel_values=x).logits


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_every_factory_model_converts_or_says_why_not(name: str) -> None:
    model = spread_weights(MODEL_FACTORIES[name]())
    reason = _why_unsupported(model)
    if reason is not None:
        with pytest.raises(xvit.UnsupportedModelError, match=reason.split("=")[0]):
            _convert(model)
        return
    before, hooks = _state(model), xvit.hook_counts(model)
    twin = _convert(model)
    x = model_input(model, batch=2)
    torch.testing.assert_close(_logits(twin, x), _logits(model, x), rtol=0, atol=1e-5)
    # GradMask sees the same network: same geometry, same maps
    a, b = xvit.get_adapter(model), xvit.get_adapter(twin)
    assert b.geometry.num_prefix_tokens == a.geometry.num_prefix_tokens
    assert b.geometry.grid() == a.geometry.grid()
    assert b.preprocessing == a.preprocessing
    e_src = xvit.explain("gradmask", model, x, target=[1, 3])
    e_dst = xvit.explain("gradmask", twin, x, target=[1, 3])
    torch.testing.assert_close(e_dst.map, e_src.map, rtol=1e-5, atol=1e-6)
    # the source is left as it was
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert xvit.hook_counts(model) == hooks
    assert not model.training and not twin.training


@pytest.mark.parametrize("name", ["timm-vit", "timm-vit-rect", "timm-deit-distilled"])
def test_timm_to_hf_to_timm_round_trip_is_exact(name: str) -> None:
    model = spread_weights(MODEL_FACTORIES[name]())
    hf = xvit.timm_to_hf(model)
    assert type(hf).__name__ == HF_TWIN[type(model).__name__]
    back = xvit.hf_to_timm(hf)
    assert type(back) is type(model)
    original, returned = model.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for key in original:
        assert torch.equal(original[key], returned[key]), key


@pytest.mark.parametrize("name", ["hf-vit", "hf-deit-teacher"])
def test_hf_to_timm_to_hf_round_trip_is_exact(name: str) -> None:
    model = spread_weights(MODEL_FACTORIES[name]())
    back = xvit.timm_to_hf(xvit.hf_to_timm(model))
    assert type(back) is type(model)
    original, returned = model.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for key in original:
        assert torch.equal(original[key], returned[key]), key
    for attr in ("hidden_size", "intermediate_size", "num_hidden_layers", "layer_norm_eps"):
        assert getattr(back.config, attr) == getattr(model.config, attr)


def _tiny_timm(**kw) -> nn.Module:
    args = dict(num_classes=4, embed_dim=24, depth=2, num_heads=3, img_size=16, patch_size=8)
    args.update(kw)
    torch.manual_seed(1)
    return spread_weights(timm.create_model("vit_tiny_patch16_224", **args).eval())


@pytest.mark.parametrize(
    "kw",
    [dict(qkv_bias=False), dict(mlp_ratio=1.5), dict(img_size=(16, 24), patch_size=(8, 4))],
    ids=["no-qkv-bias", "mlp-ratio-1.5", "rect-patches"],
)
def test_settings_carry_over(kw: dict) -> None:
    model = _tiny_timm(**kw)
    hf = xvit.timm_to_hf(model)
    cfg = hf.config
    assert cfg.qkv_bias == kw.get("qkv_bias", True)
    assert cfg.intermediate_size == model.blocks[0].mlp.fc1.out_features
    assert cfg.layer_norm_eps == model.norm.eps == 1e-6
    x = model_input(model)
    torch.testing.assert_close(_logits(hf, x), _logits(model, x), rtol=0, atol=1e-5)
    back = xvit.hf_to_timm(hf)
    assert back.blocks[0].mlp.fc1.out_features == model.blocks[0].mlp.fc1.out_features
    torch.testing.assert_close(_logits(back, x), _logits(model, x), rtol=0, atol=1e-5)


def test_dtype_and_mode_follow_the_source() -> None:
    model = _tiny_timm().double().train()
    hf = xvit.timm_to_hf(model)
    assert next(hf.parameters()).dtype == torch.float64
    assert hf.training
    x = model_input(model).double()
    model.eval(), hf.eval()
    torch.testing.assert_close(_logits(hf, x), _logits(model, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(qk_norm=True), "qk_norm"),
        (dict(init_values=0.1), "layer scale"),
        (dict(no_embed_class=True), "no_embed_class"),
        (dict(pre_norm=True), "pre_norm"),
        (dict(act_layer="gelu_tanh"), "GELU"),
    ],
)
def test_unsupported_timm_variants_say_what(kw: dict, words: str) -> None:
    with pytest.raises(xvit.UnsupportedModelError, match=words):
        xvit.timm_to_hf(_tiny_timm(**kw))


def test_wrong_direction_and_non_models() -> None:
    timm_model, hf_model = _tiny_timm(), MODEL_FACTORIES["hf-vit"]()
    with pytest.raises(xvit.UnsupportedModelError, match="hf_to_timm"):
        xvit.timm_to_hf(hf_model)
    with pytest.raises(xvit.UnsupportedModelError, match="timm_to_hf"):
        xvit.hf_to_timm(timm_model)
    for thing in (nn.Linear(2, 2), "vit", None):
        with pytest.raises(xvit.UnsupportedModelError):
            xvit.timm_to_hf(thing)
        with pytest.raises(xvit.UnsupportedModelError):
            xvit.hf_to_timm(thing)


def test_unsupported_hf_activation() -> None:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        num_labels=3,
        hidden_act="relu",
    )
    with pytest.raises(xvit.UnsupportedModelError, match="hidden_act='relu'"):
        xvit.hf_to_timm(ViTForImageClassification(cfg))
