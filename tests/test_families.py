"""The families of issue 14 on the declared-family adapter: every method runs on each, the
model is untouched, GradMask equals the per-image reference of test_gradmask.py, attention
and rollout equal references built from the model's own eager probabilities."""

from __future__ import annotations

import time

import pytest
import torch
from family_models import FAMILY_FACTORIES, PROBABILITIES
from test_gradmask import Block, Weights, reference_gradmask, spread_weights
from torch import nn

import xvit
from model_state import snapshot
from xvit.methods.gradmask import GradMask

FAMILIES = sorted(FAMILY_FACTORIES)
TOL = dict(rtol=1e-5, atol=1e-6)


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    geo = xvit.get_adapter(model).geometry
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, geo.in_chans, *geo.image_size, generator=g)


def _forwards_replaced(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in vars(m)]


# --- the contract --------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_runs_and_leaves_the_model_untouched(family: str) -> None:
    model = FAMILY_FACTORIES[family]()
    x = _input(model)
    geo = xvit.get_adapter(model).geometry
    before = snapshot(model)
    capabilities = xvit.get_adapter(model).capabilities
    for method in xvit.list_methods():
        cls = xvit.get_method(method)
        params = dict(cls.quick_params)
        if cls.randomized:
            params["seed"] = 0
        missing = [c for c in cls.capabilities_needed() if c not in capabilities]
        if missing:  # refused clearly, the missing capability named, the model untouched
            with pytest.raises(xvit.UnsupportedModelError, match=repr(missing[0])):
                xvit.explain(method, model, x, **params)
            assert snapshot(model) == before, method
            continue
        result = xvit.explain(method, model, x, **params)
        assert torch.isfinite(result.map).all(), method
        assert tuple(result.map.shape) in ((2, *geo.grid()), (2, *geo.image_size)), method
        assert snapshot(model) == before, method
        assert not _forwards_replaced(model), method


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_logits_equal_the_model(family: str) -> None:
    model = FAMILY_FACTORIES[family]()
    x = _input(model)
    adapter = xvit.get_adapter(model)
    with torch.no_grad():
        own = adapter.family.logits(model, x)  # type: ignore[attr-defined]
        torch.testing.assert_close(adapter.forward_logits(x), own)
        torch.testing.assert_close(adapter.scoring_logits(x), own, rtol=1e-5, atol=1e-5)
        with adapter.eager_attention():  # the eager path computes the same logits
            torch.testing.assert_close(adapter.forward_logits(x), own, rtol=1e-5, atol=1e-5)


# --- attention and rollout from the model's own probabilities ------------------------------
def _probabilities(family: str, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [a.double() for a in PROBABILITIES[family](model, x)]


def _row(matrix: torch.Tensor, prefix: int) -> torch.Tensor:
    return (matrix[0] if prefix else matrix.mean(dim=0))[prefix:]


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_and_rollout_match_the_models_probabilities(family: str) -> None:
    model = FAMILY_FACTORIES[family]()
    x = _input(model)
    geo = xvit.get_adapter(model).geometry
    prefix, grid = geo.num_prefix_tokens, geo.grid()
    probs = _probabilities(family, model, x)
    n = probs[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    attention, rollout = [], []
    for i in range(len(x)):
        attention.append(_row(probs[-1][i].mean(dim=0), prefix))
        r = eye
        for a in probs:
            step = a[i].mean(dim=0) + eye
            r = (step / step.sum(dim=1, keepdim=True)) @ r
        rollout.append(_row(r, prefix))
    got = xvit.explain("attention", model, x).map.double()
    torch.testing.assert_close(got, torch.stack(attention).reshape(len(x), *grid), **TOL)
    got = xvit.explain("rollout", model, x).map.double()
    torch.testing.assert_close(got, torch.stack(rollout).reshape(len(x), *grid), **TOL)


# --- GradMask equals the per-image reference -----------------------------------------------
def _lin(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    return weight.detach(), None if bias is None else bias.detach()


def _ln(m: nn.LayerNorm) -> tuple:
    return m.weight.detach(), m.bias.detach(), float(m.eps)


def torchvision_weights(m: nn.Module) -> Weights:
    """A torchvision ViT as the plain tensors of test_gradmask's reference forward."""
    blocks = []
    for b in m.encoder.layers:
        mha = b.self_attention
        ws, bs = mha.in_proj_weight.chunk(3, 0), mha.in_proj_bias.chunk(3, 0)
        blocks.append(
            Block(
                _ln(b.ln_1),
                *(_lin(w, bias) for w, bias in zip(ws, bs)),
                _lin(mha.out_proj.weight, mha.out_proj.bias),
                _ln(b.ln_2),
                _lin(b.mlp[0].weight, b.mlp[0].bias),
                _lin(b.mlp[3].weight, b.mlp[3].bias),
            )
        )
    head = m.heads.head
    return Weights(
        heads=m.encoder.layers[0].self_attention.num_heads,
        patch=(m.patch_size, m.patch_size),
        conv=_lin(m.conv_proj.weight, m.conv_proj.bias),
        tokens=[m.class_token.detach()],
        pos=m.encoder.pos_embedding.detach(),
        pos_covers_prefix=True,
        blocks=blocks,
        norm=_ln(m.encoder.ln),
        fc_norm=None,
        pool="token",
        classifiers=[(head.weight.detach(), head.bias.detach(), 0)],
    )


WEIGHTS = {"torchvision-vit": torchvision_weights}


def hybrid_reference_gradmask(
    model: nn.Module,
    qkv_modules: list[tuple[nn.Module, ...]],
    image: torch.Tensor,
    target: int,
    prefix: int,
    patch: int,
    masks_per_layer: int = 4,
) -> torch.Tensor:
    """GRADMASK.md for one image, where the family's forward is too long to rewrite here:
    the model's own forward gives the logit (q/k/v recorded by this test's own hooks: three
    projections per block, or one fused [q | k | v] output), and every masked image is
    scored alone by the model's own forward; steps 2-8 as in :func:`reference_gradmask`."""
    kept: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: kept.append(out))
        for group in qkv_modules
        for m in group
    ]
    try:
        with torch.enable_grad():
            x = image[None].clone().requires_grad_(True)
            logit = _logits(model, x)[0, target]
            grads = torch.autograd.grad(logit, kept, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    grads = [torch.zeros_like(z) if g is None else g for z, g in zip(kept, grads)]
    if len(qkv_modules[0]) == 1:  # fused: split [q | k | v]
        grads = [part for g in grads for part in g.chunk(3, dim=-1)]
    gh, gw = image.shape[-2] // patch, image.shape[-1] // patch
    d = grads[0].shape[-1]
    size = d // masks_per_layer
    masks = []
    for proj in range(3):
        for blk in range(len(qkv_modules) - 1):
            g = grads[3 * blk + proj][0]
            for group in range(masks_per_layer):
                row = g[:, group * size : (group + 1) * size].sum(dim=1).clamp(min=0)[prefix:]
                masks.append((row >= row.mean()).float().reshape(gh, gw))
    heat = torch.zeros(gh, gw)
    with torch.no_grad():
        for mask in masks:
            up = mask.repeat_interleave(patch, dim=0).repeat_interleave(patch, dim=1)
            heat += torch.softmax(_logits(model, (image * up)[None]), dim=-1)[0, target] * mask
    return heat


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(model).__module__.startswith("transformers."):
        return model(pixel_values=x).logits
    return model(x)


def _dinov2_qkv(model: nn.Module) -> list[tuple[nn.Module, ...]]:
    """q/k/v projections: ``attention.q_proj`` (transformers 5.x) or
    ``attention.attention.query`` (4.x, test_families_transformers4.py)."""
    backbone = getattr(model, "dinov2", None) or model.dinov2_with_registers
    attns = [layer.attention for layer in backbone.encoder.layer]
    if not hasattr(attns[0], "q_proj"):
        return [(a.attention.query, a.attention.key, a.attention.value) for a in attns]
    return [(a.q_proj, a.k_proj, a.v_proj) for a in attns]


def _timm_qkv(model: nn.Module) -> list[tuple[nn.Module, ...]]:
    """timm Eva/Beit: separate projections, or the fused ``qkv`` module, which runs (and so
    can be hooked) with ``qkv_bias_separate`` set by the caller."""
    attns = [b.attn for b in model.blocks]
    if isinstance(getattr(attns[0], "q_proj", None), nn.Linear):
        return [(a.q_proj, a.k_proj, a.v_proj) for a in attns]
    return [(a.qkv,) for a in attns]


def _zero_shot_qkv(model: nn.Module) -> list[tuple[nn.Module, ...]]:
    attns = [layer.self_attn for layer in model.vision_model.encoder.layers]
    return [(a.q_proj, a.k_proj, a.v_proj) for a in attns]


HYBRID = {
    "hf-clip-zero-shot": _zero_shot_qkv,
    "hf-siglip-zero-shot": _zero_shot_qkv,
    "hf-dinov2": _dinov2_qkv,
    "hf-dinov2-registers": _dinov2_qkv,
    "timm-eva02-fused": _timm_qkv,
    "timm-eva02-separate": _timm_qkv,
    "timm-beit-avg": _timm_qkv,
    "timm-beit-token": _timm_qkv,
}


@pytest.mark.parametrize("family", sorted(HYBRID))
def test_gradmask_matches_hybrid_reference(family: str) -> None:
    model = spread_weights(FAMILY_FACTORIES[family]())
    x = _input(model, batch=1)  # one image: the reference forwards each mask alone
    geo = xvit.get_adapter(model).geometry
    with torch.no_grad():
        targets = _logits(model, x).argmax(-1)
    start = time.perf_counter()
    e = xvit.explain("gradmask", model, x)
    print(f"{family}: gradmask {1000 * (time.perf_counter() - start) / len(x):.1f} ms/image")
    attns = [b.attn for b in getattr(model, "blocks", [])]
    separate = [a for a in attns if hasattr(a, "qkv_bias_separate")]
    for a in separate:  # the test's own route to the fused output: the module runs, hooked
        a.qkv_bias_separate = True
    for i in range(len(x)):
        ref = hybrid_reference_gradmask(
            model,
            HYBRID[family](model),
            x[i],
            int(targets[i]),
            geo.num_prefix_tokens,
            geo.patch_size[0],
        )
        torch.testing.assert_close(e.map[i], ref, **TOL)
    for a in separate:
        a.qkv_bias_separate = False


@pytest.mark.parametrize("family", sorted(WEIGHTS))
def test_gradmask_matches_reference(family: str) -> None:
    model = spread_weights(FAMILY_FACTORIES[family]())
    w = WEIGHTS[family](model)
    x = _input(model)
    with torch.no_grad():
        targets = model(x).argmax(-1)
    start = time.perf_counter()
    e = xvit.explain("gradmask", model, x)
    print(f"{family}: gradmask {1000 * (time.perf_counter() - start) / len(x):.1f} ms/image")
    masks = GradMask().masks(xvit.get_adapter(model), x, targets)
    for i in range(len(x)):
        ref_map, ref_masks = reference_gradmask(w, x[i], int(targets[i]))
        assert torch.equal(masks[i], ref_masks)
        torch.testing.assert_close(e.map[i], ref_map, **TOL)


# --- what is refused -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "swin_tiny_patch4_window7_224"])
def test_swin_and_cnns_are_refused_listing_the_families(name: str) -> None:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=3)
    with pytest.raises(xvit.UnsupportedModelError) as info:
        xvit.get_adapter(model)
    for _, cls in xvit.models.adapters.items():
        assert cls.description in str(info.value)


def test_require_names_the_missing_capability() -> None:
    adapter = xvit.get_adapter(FAMILY_FACTORIES[FAMILIES[0]]())
    adapter.require("qkv", "attention", method="gae")
    with pytest.raises(xvit.UnsupportedModelError, match=r"rollout needs 'teleport'"):
        adapter.require("teleport", method="rollout")
