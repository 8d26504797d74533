"""HF BEiT (transformers 5.x layout) and Data2VecVision (the 4.x layout, self-attention class
chosen at build time) on one declaration: GradMask equals the per-image reference, the eager
path is entered per call and left as it was, the relative bias index that transformers
caches per process survives xvit's inference-mode forwards. The generic family checks (every
method, logits, attention and rollout from the model's own eager probabilities) run in
test_families.py over the same factories. The transformers 4.x BEiT layout is checked at the
end (marked ``transformers4``: skipped under 5.x, run by .ci/run's second environment)."""

from __future__ import annotations

import time

import pytest
import torch
from family_models import HF_BEIT_FACTORIES, eager_twin_probabilities, hf_beit
from test_families import TOL, _input, hybrid_reference_gradmask
from test_gradmask import spread_weights
from torch import nn

import xvit
from model_state import snapshot
from xvit.models import Capture

BEIT = sorted(HF_BEIT_FACTORIES)


def _qkv(model: nn.Module) -> list[tuple[nn.Module, ...]]:
    """The q/k/v Linears of either layout, found by this test's own walk of the model."""
    found = []
    for name, module in model.named_modules():
        if name.endswith("attention") and hasattr(module, "q_proj"):
            found.append((module.q_proj, module.k_proj, module.v_proj))
        elif name.endswith("attention.attention"):
            found.append((module.query, module.key, module.value))
    return found


def _gradmask_matches_reference(model: nn.Module, label: str) -> None:
    x = _input(model, batch=1)  # one image: the reference forwards each mask alone
    geo = xvit.get_adapter(model).geometry
    with torch.no_grad():
        target = int(model(pixel_values=x).logits.argmax(-1)[0])
    start = time.perf_counter()
    e = xvit.explain("gradmask", model, x, target=[target])
    print(f"{label}: gradmask {1000 * (time.perf_counter() - start):.1f} ms/image")
    ref = hybrid_reference_gradmask(
        model, _qkv(model), x[0], target, geo.num_prefix_tokens, geo.patch_size[0]
    )
    assert len(_qkv(model)) == geo.num_blocks
    torch.testing.assert_close(e.map[0], ref, **TOL)


@pytest.mark.parametrize("family", BEIT)
def test_gradmask_matches_hybrid_reference(family: str) -> None:
    _gradmask_matches_reference(spread_weights(HF_BEIT_FACTORIES[family]()), family)


def test_data2vec_runs_sdpa_and_gets_its_classes_back() -> None:
    model = HF_BEIT_FACTORIES["hf-data2vec"]()
    selfs = [layer.attention.attention for layer in model.data2vec_vision.encoder.layer]
    own = [type(m) for m in selfs]
    assert all("Sdpa" in c.__name__ for c in own)  # the default: no probabilities there
    adapter = xvit.get_adapter(model)
    x = _input(model)
    before = snapshot(model)
    with torch.no_grad(), Capture(adapter, attention=True) as cap:
        assert [type(m).__name__ for m in selfs] == [c.__mro__[1].__name__ for c in own]
        adapter.forward_logits(x)
    assert [type(m) for m in selfs] == own and snapshot(model) == before
    for a, b in zip(cap.attentions(), eager_twin_probabilities(model, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_bias_index_made_in_inference_mode_does_not_break_later_gradients() -> None:
    """transformers caches the relative position index per window for the whole process: a
    size no other test uses, so the first forward at it runs inside xvit's inference mode."""
    model = HF_BEIT_FACTORIES["hf-beit-mean"]()
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    first = xvit.explain("rise", model, x, num_masks=4, seed=0)  # no gradients yet
    assert first.map.shape[-2:] in ((5, 7), (40, 56))
    for method in ("gae", "gradmask"):  # backward through the cached index
        assert torch.isfinite(xvit.explain(method, model, x).map).all()


def test_relative_bias_reaches_the_probabilities() -> None:
    """Non-trivial position information: zeroing the tables changes the probabilities."""
    model = HF_BEIT_FACTORIES["hf-beit-mean"]()
    x = _input(model, batch=1)
    with_bias = xvit.explain("attention", model, x).map
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.zero_()
    assert not torch.allclose(xvit.explain("attention", model, x).map, with_bias)


# --- transformers 4.x: HF BEiT in the layout Data2VecVision keeps ---------------------------
@pytest.mark.transformers4
def test_legacy_beit_layout_attention_and_gradmask() -> None:
    model = spread_weights(hf_beit(use_relative_position_bias=True))
    assert "beit.encoder.layer.0.attention.attention.query.weight" in model.state_dict()
    adapter = xvit.get_adapter(model)
    assert type(adapter).__name__ == "HFBeitAdapter"
    x = _input(model)
    before = snapshot(model)
    with torch.no_grad(), Capture(adapter, attention=True) as cap:
        adapter.forward_logits(x)
    assert snapshot(model) == before
    for a, b in zip(cap.attentions(), eager_twin_probabilities(model, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    _gradmask_matches_reference(model, "hf-beit 4.x")
    assert snapshot(model) == before
