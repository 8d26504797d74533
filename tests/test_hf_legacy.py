"""The transformers 4.x module layout, checked in-process under transformers 4.x.

In 4.x, HF ViT and DeiT layers read ``encoder.layer[i].attention.attention.query``; the HF
adapter supports that layout beside 5.x's. These tests build tiny 4.x ViT and DeiT-with-teacher
models and check xvit on them against oracles that live in the same process: the model's own
``output_attentions``, the GradMask reference written from the method's definition
(test_gradmask.py), and timm's forward of the weights xvit's converter moves.

They are marked ``transformers4``: skipped under transformers 5.x (conftest.py), run by .ci/run
in the second environment it builds from ``.ci/transformers4.txt``. Nothing is installed here.
"""

from __future__ import annotations

import pytest
import torch
from test_gradmask import reference_forward, reference_gradmask, spread_weights, weights_of
from torch import nn

import xvit
from conftest import DEPTH, HEADS, HF_CONFIG, HIDDEN
from model_state import snapshot
from xvit.methods.gradmask import GradMask
from xvit.models import Capture

pytestmark = pytest.mark.transformers4

#: model kind -> (config class, model class, image size, prefix tokens)
KINDS = {
    "vit": ("ViTConfig", "ViTForImageClassification", (32, 32), 1),
    "deit-teacher": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", (24, 40), 2),
}
TARGETS = [1, 3]


def legacy_model(kind: str) -> nn.Module:
    """A tiny 4.x-layout model of ``kind`` with spread random weights, in eval mode."""
    import transformers

    config_name, model_name, size, _ = KINDS[kind]
    config = getattr(transformers, config_name)(**HF_CONFIG, image_size=size)
    torch.manual_seed(0)
    return spread_weights(getattr(transformers, model_name)(config)).eval()


def _input(kind: str, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *KINDS[kind][2], generator=g)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_legacy_layout_and_geometry(kind: str) -> None:
    model = legacy_model(kind)
    keys = set(model.state_dict())
    prefix = "vit" if kind == "vit" else "deit"
    assert f"{prefix}.encoder.layer.0.attention.attention.query.weight" in keys
    assert f"{prefix}.encoder.layer.{DEPTH - 1}.output.dense.weight" in keys
    adapter = xvit.get_adapter(model)
    assert adapter.legacy_layout  # type: ignore[attr-defined]
    geo = adapter.geometry
    _, _, size, prefix_tokens = KINDS[kind]
    assert geo.num_blocks == DEPTH and geo.num_heads == HEADS and geo.hidden_size == HIDDEN
    assert geo.num_prefix_tokens == prefix_tokens
    assert tuple(geo.patch_size) == (8, 8) and tuple(geo.image_size) == size


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_legacy_attention_capture_equals_output_attentions(kind: str) -> None:
    model = legacy_model(kind)
    adapter = xvit.get_adapter(model)
    x = _input(kind)
    before = snapshot(model)
    with torch.no_grad():
        own = model(pixel_values=x, output_attentions=True).attentions
        with adapter.eager_attention(), Capture(adapter, attention=True) as cap:
            adapter.forward_logits(x)
    captured = cap.attentions()
    assert snapshot(model) == before  # hooks removed, attention implementation restored
    _, _, (h, w), prefix_tokens = KINDS[kind]
    n = prefix_tokens + (h // 8) * (w // 8)
    assert len(captured) == len(own) == DEPTH
    for a, b in zip(captured, own):
        assert a.shape == (2, HEADS, n, n)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, HEADS, n))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_legacy_gradmask_equals_the_reference(kind: str) -> None:
    model = legacy_model(kind)
    weights = weights_of(model)  # read by the 4.x names
    x = _input(kind)
    reference = reference_forward(weights, x)
    torch.testing.assert_close(reference, _logits(model, x), rtol=1e-5, atol=1e-5)
    before = snapshot(model)
    e = xvit.explain("gradmask", model, x, target=TARGETS)
    assert snapshot(model) == before
    adapter = xvit.get_adapter(model)
    assert e.map.shape == (2, *adapter.geometry.grid())
    masks = GradMask().masks(adapter, x, torch.tensor(TARGETS))
    for i, target in enumerate(TARGETS):
        ref_map, ref_masks = reference_gradmask(weights, x[i], target)
        assert torch.equal(masks[i], ref_masks)
        torch.testing.assert_close(e.map[i], ref_map, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_converter_reads_and_writes_the_legacy_layout(kind: str) -> None:
    model = legacy_model(kind)
    x = _input(kind)
    logits = _logits(model, x)
    before = snapshot(model)
    as_timm = xvit.hf_to_timm(model)
    back = xvit.timm_to_hf(as_timm)
    assert snapshot(model) == before
    expected = "VisionTransformerDistilled" if kind == "deit-teacher" else "VisionTransformer"
    assert type(as_timm).__name__ == expected
    with torch.no_grad():
        torch.testing.assert_close(as_timm(x), logits, rtol=0, atol=1e-5)
    gradmask = xvit.explain("gradmask", model, x, target=TARGETS).map
    timm_gradmask = xvit.explain("gradmask", as_timm, x, target=TARGETS).map
    torch.testing.assert_close(timm_gradmask, gradmask, rtol=1e-5, atol=1e-6)
    # back in the 4.x layout, with the very same weights
    assert type(back) is type(model)
    original, returned = model.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    assert all(torch.equal(original[k], returned[k]) for k in original)
    torch.testing.assert_close(_logits(back.eval(), x), logits, rtol=0, atol=0)
