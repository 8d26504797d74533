"""Explaining ``xvit.zero_shot`` classifiers over open_clip CLIP ViTs (optional extra
``open-clip``): logits equal open_clip's own, every method runs and leaves the user's model
untouched, attention and rollout equal the probabilities of the model's own
``nn.MultiheadAttention``, GradMask equals GRADMASK.md on a forward written out here, and the
towers xvit cannot read are refused naming what works."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_families import hybrid_reference_gradmask
from test_gradmask import spread_weights
from torch import nn

import xvit
from model_state import snapshot

open_clip = pytest.importorskip(
    "open_clip", reason="open_clip is not installed (optional: pip install xvit[open-clip])"
)

TOL = dict(rtol=1e-5, atol=1e-5)
VISION = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32)
TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)


def tiny_clip(bias: float | None = None, **vision: object) -> nn.Module:
    torch.manual_seed(0)
    return open_clip.CLIP(16, dict(VISION, **vision), TEXT, init_logit_bias=bias).eval()


def text_features(model: nn.Module, prompts: int = 3) -> torch.Tensor:
    tokens = torch.randint(1, 64, (prompts, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.encode_text(tokens)


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bias", [None, -2.5])
def test_logits_are_the_scaled_cosine(bias: float | None) -> None:
    model = tiny_clip(bias)
    text, x = text_features(model), pixels()
    classifier = xvit.zero_shot(model, text_features=text)
    with torch.no_grad():
        cos = F.normalize(model.encode_image(x), dim=-1) @ F.normalize(text, dim=-1).T
        expected = model.logit_scale.exp() * cos
        if bias is not None:
            expected = expected + model.logit_bias
        torch.testing.assert_close(classifier(x), expected, **TOL)
        torch.testing.assert_close(xvit.get_adapter(classifier).forward_logits(x), expected, **TOL)


def test_geometry_and_pooling_come_from_the_tower() -> None:
    adapter = xvit.get_adapter(
        xvit.zero_shot(tiny_clip(), text_features=text_features(tiny_clip()))
    )
    assert type(adapter) is xvit.models.OpenClipZeroShotAdapter
    geo = adapter.geometry
    assert (geo.num_prefix_tokens, geo.grid(), geo.num_heads, geo.num_blocks) == (1, (4, 4), 2, 2)
    assert adapter.pooling == "token"
    for vision, pooling in [
        (dict(pool_type="avg"), "mean"),
        (dict(attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4), "attention-pool"),
    ]:
        model = tiny_clip(**vision)
        classifier = xvit.zero_shot(model, text_features=text_features(model))
        assert xvit.get_adapter(classifier).pooling == pooling


def test_every_method_runs_and_leaves_the_model_untouched() -> None:
    model = tiny_clip()
    model.transformer.train()  # the text tower's mode survives too
    prompts = ["a cat", "a dog", "a car"]
    classifier = xvit.zero_shot(model, text_features=text_features(model))
    classifier.class_names = prompts
    x = pixels()
    before = snapshot(model)
    capabilities = xvit.get_adapter(classifier).capabilities
    for method in xvit.list_methods():
        cls = xvit.get_method(method)
        params = dict(cls.quick_params, **({"seed": 0} if cls.randomized else {}))
        if not set(cls.capabilities_needed()) <= capabilities:  # refused, clearly
            with pytest.raises(xvit.UnsupportedModelError, match=f"{method} needs"):
                xvit.explain(method, classifier, x, **params)
            continue
        result = xvit.explain(method, classifier, x, **params)
        assert torch.isfinite(result.map).all(), method
        assert tuple(result.map.shape) in ((2, 4, 4), (2, 32, 32)), method
        assert snapshot(model) == before, method
        assert not [n for n, m in model.named_modules() if "forward" in vars(m)], method
    e = xvit.explain("gradmask", classifier, x[:1], target="a dog")
    assert int(e.targets[0]) == 1 and list(e.class_names) == ["a dog"]


def own_probabilities(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's probabilities from its own ``nn.MultiheadAttention``, asked for them."""
    inputs: list[torch.Tensor] = []
    blocks = model.visual.transformer.resblocks
    handles = [b.ln_1.register_forward_hook(lambda _m, _i, out: inputs.append(out)) for b in blocks]
    try:
        with torch.no_grad():
            model.encode_image(x)
            return [
                b.attn(h, h, h, need_weights=True, average_attn_weights=False)[1].double()
                for b, h in zip(blocks, inputs)
            ]
    finally:
        for h in handles:
            h.remove()


def test_attention_and_rollout_equal_the_models_own_probabilities() -> None:
    model = tiny_clip()
    classifier = xvit.zero_shot(model, text_features=text_features(model))
    x = pixels()
    probs = own_probabilities(model, x)
    eye = torch.eye(probs[0].shape[-1], dtype=torch.float64)
    rollout = eye.expand(len(x), -1, -1)
    for a in probs:
        step = a.mean(dim=1) + eye
        rollout = (step / step.sum(dim=-1, keepdim=True)) @ rollout
    attention = probs[-1].mean(dim=1)[:, 0, 1:].reshape(2, 4, 4)
    got = xvit.explain("attention", classifier, x).map.double()
    torch.testing.assert_close(got, attention, rtol=1e-5, atol=1e-6)
    got = xvit.explain("rollout", classifier, x).map.double()
    torch.testing.assert_close(got, rollout[:, 0, 1:].reshape(2, 4, 4), rtol=1e-5, atol=1e-6)


class WrittenOut(nn.Module):
    """The classifier's forward written out from the open_clip model's weights, with q, k and
    v as outputs of separate Linears (so the reference can hook them)."""

    def __init__(self, model: nn.Module, text: torch.Tensor) -> None:
        super().__init__()
        self.model, self.text = model, F.normalize(text, dim=-1)
        self.qkv = []
        for block in model.visual.transformer.resblocks:
            mha = block.attn
            triple = []
            for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)):
                lin = nn.Linear(w.shape[1], w.shape[0])
                lin.weight.data, lin.bias.data = w.detach().clone(), b.detach().clone()
                triple.append(lin)
            self.qkv.append(tuple(triple))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.model.visual
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([v.class_embedding.expand(len(x), 1, -1), h], dim=1)
        h = v.ln_pre(h + v.positional_embedding)
        for block, (q_lin, k_lin, v_lin) in zip(v.transformer.resblocks, self.qkv):
            heads = block.attn.num_heads
            n = block.ln_1(h)
            q, k, val = (
                t(n).unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q_lin, k_lin, v_lin)
            )
            p = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)
            h = h + block.attn.out_proj((p @ val).transpose(1, 2).flatten(2))
            h = h + block.mlp(block.ln_2(h))
        image = F.normalize(v.ln_post(h[:, 0]) @ v.proj, dim=-1)
        return self.model.logit_scale.exp() * image @ self.text.T


def test_gradmask_equals_the_reference() -> None:
    model = spread_weights(tiny_clip())
    text = text_features(model)
    classifier = xvit.zero_shot(model, text_features=text)
    reference = WrittenOut(model, text)
    x = pixels(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), classifier(x), **TOL)
        target = int(classifier(x).argmax())
    e = xvit.explain("gradmask", classifier, x, target=target)
    ref = hybrid_reference_gradmask(reference, reference.qkv, x[0], target, 1, 8)
    torch.testing.assert_close(e.map[0], ref, rtol=1e-5, atol=1e-6)


def test_towers_it_cannot_read_are_refused() -> None:
    custom = tiny_clip(qk_norm=True)
    classifier = xvit.zero_shot(custom, text_features=text_features(custom))
    with pytest.raises(xvit.UnsupportedModelError, match=r"MultiheadAttention"):
        xvit.get_adapter(classifier)
    resnet = open_clip.CLIP(16, dict(layers=(1, 1, 1, 1), width=8, image_size=32), TEXT).eval()
    classifier = xvit.zero_shot(resnet, text_features=text_features(resnet))
    with pytest.raises(xvit.UnsupportedModelError, match=r"not open_clip's VisionTransformer"):
        xvit.get_adapter(classifier)
