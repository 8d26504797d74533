"""Attention-based methods (attention, rollout, gae) against plain references.

The references below are written from the papers' definitions, one image and one block at a
time in float64. They get attention probabilities without xvit: for HF models from the
model's own ``output_attentions`` (eager path), for timm models from an eager
re-implementation of the forward (checked against the model's logits).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import xvit
from conftest import DEPTH, MODEL_FACTORIES, model_input
from xvit import ParameterError
from xvit.methods.rollout import add_residual, discard_lowest

MODELS = sorted(MODEL_FACTORIES)
TOL = dict(rtol=1e-5, atol=1e-6)


# --- oracles -------------------------------------------------------------------------------
def _timm_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every block's attention probabilities from a hand-written eager forward."""
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    attentions = []
    for blk in model.blocks:
        at = blk.attn
        y = blk.norm1(h)
        b, n, _ = y.shape
        qkv = at.qkv(y).reshape(b, n, 3, at.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = at.q_norm(qkv[0]), at.k_norm(qkv[1]), qkv[2]
        probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        attentions.append(probs)
        mixed = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        h = h + blk.ls1(at.proj(at.norm(mixed)))
        h = h + blk.ls2(blk.mlp(blk.norm2(h)))
    return model.forward_head(model.norm(h)), attentions


def _hf_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and attentions from the model's own ``output_attentions`` on its eager path."""
    saved = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        out = model(pixel_values=x, output_attentions=True)
    finally:
        model.config._attn_implementation = saved
    return out.logits, list(out.attentions)


def oracle(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if hasattr(model, "config"):
        return _hf_forward(model, x)
    logits, attentions = _timm_forward(model, x)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)  # faithful re-impl
    return logits, attentions


def _prefix(model: nn.Module) -> int:
    if hasattr(model, "config"):
        return 2 if "DeiT" in type(model).__name__ else 1
    return int(model.num_prefix_tokens)


def _grid(model: nn.Module) -> tuple[int, int]:
    if hasattr(model, "config"):
        n = model.config.image_size // model.config.patch_size
        return n, n
    return tuple(model.patch_embed.grid_size)


def _explaining_row(matrix: torch.Tensor, prefix: int) -> torch.Tensor:
    """CLS row over the patches; with no prefix token, the mean of all rows."""
    row = matrix[0] if prefix else matrix.mean(dim=0)
    return row[prefix:]


def _fuse(heads: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        return heads.sum(dim=0) / heads.shape[0]
    out = heads[0].clone()
    for h in heads[1:]:
        out = torch.maximum(out, h) if how == "max" else torch.minimum(out, h)
    return out


def ref_attention(model, x):
    _, attentions = oracle(model, x)
    prefix, (gh, gw) = _prefix(model), _grid(model)
    last = attentions[-1].detach().double()
    maps = [_explaining_row(_fuse(last[i], "mean"), prefix) for i in range(len(x))]
    return torch.stack(maps).reshape(len(x), gh, gw)


def ref_rollout(model, x, head_fusion="mean", discard_ratio=0.0):
    _, attentions = oracle(model, x)
    prefix, (gh, gw) = _prefix(model), _grid(model)
    n = attentions[0].shape[-1]
    maps = []
    for i in range(len(x)):
        r = torch.eye(n, dtype=torch.float64)
        for a in attentions:
            fused = _fuse(a[i].detach().double(), head_fusion)
            k = int(n * n * discard_ratio)
            values = fused.flatten().tolist()  # lowest first; ties in row-major order
            for flat_index in sorted(range(n * n), key=lambda j: (values[j], j))[:k]:
                row, col = divmod(flat_index, n)
                if not (row == col and row < prefix):
                    fused[row, col] = 0.0
            step = fused + torch.eye(n, dtype=torch.float64)
            step = step / step.sum(dim=1, keepdim=True)
            r = step @ r
        maps.append(_explaining_row(r, prefix))
    return torch.stack(maps).reshape(len(x), gh, gw)


def ref_gae(model, x, target):
    logits, attentions = oracle(model, x)
    score = logits[torch.arange(len(x)), target].sum()
    grads = torch.autograd.grad(score, attentions)
    prefix, (gh, gw) = _prefix(model), _grid(model)
    n = attentions[0].shape[-1]
    maps = []
    for i in range(len(x)):
        r = torch.eye(n, dtype=torch.float64)
        for a, g in zip(attentions, grads):
            weighted = (g[i].double() * a[i].detach().double()).clamp(min=0)
            r = r + weighted.mean(dim=0) @ r
        maps.append(_explaining_row(r, prefix))
    return torch.stack(maps).reshape(len(x), gh, gw)


def run(name, model, x, target=None, **params) -> torch.Tensor:
    return xvit.explain(name, model, x, target=target, **params).map.double()


def assert_informative(m: torch.Tensor) -> None:
    """Guard against a vacuous match: the map must vary over the patches."""
    assert torch.isfinite(m).all()
    assert (m.flatten(1).std(dim=1) > 1e-4 * m.flatten(1).abs().max(dim=1).values).all()


# --- registry and parameters ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "family", "gradients"),
    [
        ("attention", "attention", False),
        ("rollout", "attention", False),
        ("gae", "attention+gradient", True),
    ],
)
def test_registered_with_metadata(name, family, gradients):
    cls = xvit.get_method(name)
    assert cls.name == name and cls.family == family
    assert cls.needs_attention is True and cls.needs_gradients is gradients
    assert cls.paper and cls.summary
    assert "References:" in cls.__doc__ and "Example:" in cls.__doc__


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_discard_ratio_out_of_range(ratio):
    with pytest.raises(ParameterError, match=r"discard_ratio must be a number in \[0, 1\)"):
        xvit.make_explainer("rollout", discard_ratio=ratio)


@pytest.mark.parametrize("fusion", ["avg", "MEAN", "", None, 1])
def test_bad_head_fusion(fusion):
    with pytest.raises(ParameterError, match="head_fusion must be one of 'mean', 'max', 'min'"):
        xvit.make_explainer("rollout", head_fusion=fusion)


@pytest.mark.parametrize("name", ["attention", "gae"])
def test_parameterless_methods_reject_parameters(name):
    with pytest.raises(ParameterError, match="unknown parameter"):
        xvit.make_explainer(name, head_fusion="mean")


# --- agreement with the references ---------------------------------------------------------
@pytest.mark.parametrize("model_name", MODELS)
def test_attention_matches_reference(model_name):
    model = MODEL_FACTORIES[model_name]()
    x = model_input(model)
    got = run("attention", model, x)
    torch.testing.assert_close(got, ref_attention(model, x), **TOL)
    assert_informative(got)


@pytest.mark.parametrize("model_name", MODELS)
def test_rollout_matches_reference(model_name):
    model = MODEL_FACTORIES[model_name]()
    x = model_input(model)
    got = run("rollout", model, x)
    torch.testing.assert_close(got, ref_rollout(model, x), **TOL)
    assert_informative(got)


@pytest.mark.parametrize(
    "model_name", ["timm-vit-registers", "hf-deit-teacher", "timm-vit-avgpool"]
)
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 0.999])
def test_rollout_fusions_and_discarding_match_reference(model_name, fusion, ratio):
    model = MODEL_FACTORIES[model_name]()
    x = model_input(model)
    got = run("rollout", model, x, head_fusion=fusion, discard_ratio=ratio)
    torch.testing.assert_close(got, ref_rollout(model, x, fusion, ratio), **TOL)
    assert torch.isfinite(got).all()


def test_rollout_without_discarding_is_half_attention_plus_half_identity():
    """Abnar & Zuidema's form: rollout of 0.5 A + 0.5 I with A averaged over heads."""
    model = MODEL_FACTORIES["hf-vit"]()
    x = model_input(model)
    _, attentions = oracle(model, x)
    n = attentions[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64).expand(len(x), n, n)
    for a in attentions:
        r = (0.5 * a.detach().double().mean(dim=1) + 0.5 * torch.eye(n, dtype=torch.float64)) @ r
    expected = r[:, 0, 1:].reshape(len(x), *_grid(model))
    torch.testing.assert_close(run("rollout", model, x, discard_ratio=0), expected, **TOL)


def test_discarding_changes_the_map():
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model)
    plain, discarded = run("rollout", model, x), run("rollout", model, x, discard_ratio=0.9)
    assert not torch.allclose(plain, discarded, atol=1e-4)


@pytest.mark.parametrize("model_name", MODELS)
def test_gae_matches_reference(model_name):
    model = MODEL_FACTORIES[model_name]()
    x = model_input(model)
    target = torch.tensor([1, 3])
    got = run("gae", model, x, target=target)
    expected = ref_gae(model, x, target)
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=1e-5, atol=1e-6)
    assert_informative(got)


def test_gae_depends_on_the_target():
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=1)
    assert not torch.allclose(run("gae", model, x, target=0), run("gae", model, x, target=4))


# --- analytic answers ----------------------------------------------------------------------
def _uniform_attention(model_name: str) -> nn.Module:
    """A timm model whose queries and keys are 0, so every attention row is uniform 1/N."""
    model = MODEL_FACTORIES[model_name]()
    with torch.no_grad():
        for blk in model.blocks:
            d = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[: 2 * d].zero_()
            blk.attn.qkv.bias[: 2 * d].zero_()
    return model


@pytest.mark.parametrize("model_name", ["timm-vit", "timm-vit-registers", "timm-vit-avgpool"])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_uniform_attention_has_a_closed_form(model_name, fusion):
    """With A = J/N every block: rollout = 2^-L I + (1 - 2^-L) J/N, so each patch of the CLS
    row is (1 - 2^-L)/N and each patch of the mean row is 1/N; raw attention is 1/N."""
    model = _uniform_attention(model_name)
    x = model_input(model)
    prefix, (gh, gw) = int(model.num_prefix_tokens), tuple(model.patch_embed.grid_size)
    n = prefix + gh * gw
    cls_value = (1 - 0.5**DEPTH) / n if prefix else 1 / n
    rollout = run("rollout", model, x, head_fusion=fusion)
    torch.testing.assert_close(rollout, torch.full_like(rollout, cls_value), **TOL)
    attention = run("attention", model, x)
    torch.testing.assert_close(attention, torch.full_like(attention, 1 / n), **TOL)


def test_discard_lowest_spares_prefix_self_attention_per_image():
    n, prefix = 4, 2
    first = torch.arange(1.0, 17.0).reshape(n, n)
    first[0, 0], first[1, 1] = 0.1, 0.2  # the two prefix self-attentions are the lowest
    second = first.flip(0, 1)  # another image: its lowest entries sit on patch tokens
    batch = torch.stack([first, second])
    before = batch.clone()
    out = discard_lowest(batch, 0.25, prefix)  # k = int(16 * 0.25) = 4 lowest per image
    expected_first = first.clone()
    expected_first[0, 1] = expected_first[0, 2] = 0.0  # values 2 and 3; 0.1 and 0.2 are kept
    expected_second = second.clone()
    for row, col in [(3, 3), (2, 2), (3, 2), (3, 1)]:  # values 0.1, 0.2, 2, 3 of image two
        expected_second[row, col] = 0.0
    torch.testing.assert_close(out, torch.stack([expected_first, expected_second]))
    torch.testing.assert_close(batch, before)  # the input is not modified in place


def test_residual_rows_sum_to_one_even_when_all_attention_is_discarded():
    fused = torch.zeros(1, 5, 5)
    torch.testing.assert_close(add_residual(fused)[0], torch.eye(5))
    rand = torch.rand(3, 6, 6)
    torch.testing.assert_close(add_residual(rand).sum(-1), torch.ones(3, 6))


# --- batches and model state ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["attention", "rollout", "gae"])
@pytest.mark.parametrize("model_name", ["timm-deit-distilled", "hf-vit", "timm-vit-rect"])
def test_batch_equivalence(name, model_name):
    model = MODEL_FACTORIES[model_name]()
    x = model_input(model, batch=3)
    target = [0, 2, 4]
    params = {"discard_ratio": 0.5} if name == "rollout" else {}
    batched = run(name, model, x, target=target, **params)
    singles = torch.cat(
        [run(name, model, x[i : i + 1], target=target[i], **params) for i in range(3)]
    )
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-7)


def _raise_on_eager(flag_is_eager):
    def hook(_module, _inputs, _output):
        if flag_is_eager():
            raise RuntimeError("boom on the eager path")

    return hook


@pytest.mark.parametrize("name", ["attention", "rollout", "gae"])
def test_timm_fused_attn_flags_restored(name):
    model = MODEL_FACTORIES["timm-vit"]()
    pattern = [True, False, True]
    for blk, flag in zip(model.blocks, pattern):
        blk.attn.fused_attn = flag
    x = model_input(model, batch=1)
    hooks_before = xvit.hook_counts(model)
    xvit.explain(name, model, x)
    assert [blk.attn.fused_attn for blk in model.blocks] == pattern
    assert xvit.hook_counts(model) == hooks_before
    assert all(p.grad is None for p in model.parameters())

    last = model.blocks[-1]
    handle = last.register_forward_hook(_raise_on_eager(lambda: not last.attn.fused_attn))
    try:
        with pytest.raises(RuntimeError, match="boom on the eager path"):
            xvit.explain(name, model, x)
    finally:
        handle.remove()
    assert [blk.attn.fused_attn for blk in model.blocks] == pattern
    assert xvit.hook_counts(model) == hooks_before


@pytest.mark.parametrize("name", ["attention", "rollout", "gae"])
def test_hf_attn_implementation_restored(name):
    model = MODEL_FACTORIES["hf-deit"]()
    model.config._attn_implementation = "sdpa"
    x = model_input(model, batch=1)
    xvit.explain(name, model, x)
    assert model.config._attn_implementation == "sdpa"
    assert all(p.grad is None for p in model.parameters())

    layers = model.deit.layers if hasattr(model.deit, "layers") else model.deit.encoder.layer
    handle = layers[-1].register_forward_hook(
        _raise_on_eager(lambda: model.config._attn_implementation == "eager")
    )
    try:
        with pytest.raises(RuntimeError, match="boom on the eager path"):
            xvit.explain(name, model, x)
    finally:
        handle.remove()
    assert model.config._attn_implementation == "sdpa"


def test_hf_explain_adds_no_hooks():
    model = MODEL_FACTORIES["hf-vit"]()
    before = xvit.hook_counts(model)
    xvit.explain("rollout", model, model_input(model, batch=1))
    assert xvit.hook_counts(model) == before
