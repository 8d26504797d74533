"""GradMask against an independent reference written from /work/shared/GRADMASK.md.

The reference below never touches xvit's capture layer or the model's own forward: it reads the
weights of a tiny timm or HF model into plain tensors, re-implements the ViT forward with
``torch.nn.functional`` (patch convolution, prefix tokens, position embedding, pre-norm blocks
with explicit q/k/v projections and softmax attention, final norm, pooling, heads), takes the
gradients of the target's raw logit with respect to its own q/k/v tensors, builds each binary
mask, scores ONE masked image per forward in a Python loop, and sums probability x mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from xvit.methods.gradmask import GradMask

RTOL = 1e-5
ATOL = 1e-6
DISTILLED = [n for n in sorted(MODEL_FACTORIES) if "distilled" in n or "teacher" in n]


# --- the reference --------------------------------------------------------------------------
@dataclass
class Block:
    ln1: tuple[torch.Tensor, torch.Tensor, float]
    q: tuple[torch.Tensor, torch.Tensor | None]
    k: tuple[torch.Tensor, torch.Tensor | None]
    v: tuple[torch.Tensor, torch.Tensor | None]
    o: tuple[torch.Tensor, torch.Tensor | None]
    ln2: tuple[torch.Tensor, torch.Tensor, float]
    fc1: tuple[torch.Tensor, torch.Tensor | None]
    fc2: tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class Weights:
    """A ViT as plain tensors, whichever library built it."""

    heads: int
    patch: tuple[int, int]
    conv: tuple[torch.Tensor, torch.Tensor | None]
    tokens: list[torch.Tensor]  # prefix tokens in sequence order, each 1 x t x D
    pos: torch.Tensor
    pos_covers_prefix: bool
    blocks: list[Block]
    norm: tuple[torch.Tensor, torch.Tensor, float] | None
    fc_norm: tuple[torch.Tensor, torch.Tensor, float] | None
    pool: str  # "token" or "avg"
    classifiers: list[tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=list)

    @property
    def num_prefix(self) -> int:
        return sum(int(t.shape[1]) for t in self.tokens)


def _lin(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return m.weight.detach(), None if m.bias is None else m.bias.detach()


def _ln(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    if isinstance(m, nn.Identity):
        return None
    return m.weight.detach(), m.bias.detach(), float(m.eps)


def weights_of(model: nn.Module) -> Weights:
    """Read a tiny timm or HF (5.x or 4.x) ViT's parameters by their own names."""
    if type(model).__module__.startswith("timm."):
        return _timm_weights(model)
    return _hf_weights(model)


def _timm_weights(m) -> Weights:
    blocks = []
    for b in m.blocks:
        w, bias = _lin(b.attn.qkv)
        ws = w.chunk(3, 0)
        bs = bias.chunk(3, 0) if bias is not None else (None, None, None)
        blocks.append(
            Block(
                _ln(b.norm1),
                (ws[0], bs[0]),
                (ws[1], bs[1]),
                (ws[2], bs[2]),
                _lin(b.attn.proj),
                _ln(b.norm2),
                _lin(b.mlp.fc1),
                _lin(b.mlp.fc2),
            )
        )
    tokens = [m.cls_token] if m.cls_token is not None else []
    if hasattr(m, "dist_token"):
        tokens.append(m.dist_token)
    if m.reg_token is not None:
        tokens.append(m.reg_token)
    classifiers = [(m.head.weight.detach(), m.head.bias.detach(), 0)]
    if hasattr(m, "head_dist"):
        classifiers.append((m.head_dist.weight.detach(), m.head_dist.bias.detach(), 1))
    return Weights(
        heads=m.blocks[0].attn.num_heads,
        patch=tuple(m.patch_embed.patch_size),
        conv=_lin(m.patch_embed.proj),
        tokens=[t.detach() for t in tokens],
        pos=m.pos_embed.detach(),
        pos_covers_prefix=not m.no_embed_class,
        blocks=blocks,
        norm=_ln(m.norm),
        fc_norm=_ln(m.fc_norm),
        pool=m.global_pool,
        classifiers=classifiers,
    )


def _hf_block(layer) -> Block:
    """One encoder layer, in the transformers 5.x or (``attention.attention.query``) 4.x layout."""
    attn = layer.attention
    if hasattr(attn, "q_proj"):  # 5.x
        q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
    else:  # 4.x
        q, k, v = attn.attention.query, attn.attention.key, attn.attention.value
        o, fc1, fc2 = attn.output.dense, layer.intermediate.dense, layer.output.dense
    return Block(
        _ln(layer.layernorm_before),
        _lin(q),
        _lin(k),
        _lin(v),
        _lin(o),
        _ln(layer.layernorm_after),
        _lin(fc1),
        _lin(fc2),
    )


def _hf_weights(m) -> Weights:
    bb = m.vit if hasattr(m, "vit") else m.deit
    emb = bb.embeddings
    layers = bb.layers if hasattr(bb, "layers") else bb.encoder.layer  # 5.x, 4.x
    blocks = [_hf_block(layer) for layer in layers]
    tokens = [emb.cls_token.detach()]
    if getattr(emb, "distillation_token", None) is not None:
        tokens.append(emb.distillation_token.detach())
    if hasattr(m, "distillation_classifier"):
        heads = [(m.cls_classifier, 0), (m.distillation_classifier, 1)]
    else:
        heads = [(m.classifier, 0)]
    patch = m.config.patch_size
    return Weights(
        heads=m.config.num_attention_heads,
        patch=(patch, patch) if isinstance(patch, int) else tuple(patch),
        conv=_lin(emb.patch_embeddings.projection),
        tokens=tokens,
        pos=emb.position_embeddings.detach(),
        pos_covers_prefix=True,
        blocks=blocks,
        norm=_ln(bb.layernorm),
        fc_norm=None,
        pool="token",
        classifiers=[(h.weight.detach(), h.bias.detach(), i) for h, i in heads],
    )


def reference_forward(w: Weights, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
    """Logits of the ViT ``w`` (the mean over its heads); q/k/v of each block go to ``keep``."""
    b = x.shape[0]
    t = F.conv2d(x, w.conv[0], w.conv[1], stride=w.patch).flatten(2).transpose(1, 2)
    prefix = [tok.expand(b, -1, -1) for tok in w.tokens]
    if w.pos_covers_prefix:
        t = torch.cat([*prefix, t], dim=1) + w.pos
    else:
        t = torch.cat([*prefix, t + w.pos], dim=1)
    n, d = t.shape[1], t.shape[2]
    dh = d // w.heads
    for blk in w.blocks:
        h = F.layer_norm(t, (d,), *blk.ln1[:2], eps=blk.ln1[2])
        q, k, v = (F.linear(h, *p) for p in (blk.q, blk.k, blk.v))
        if keep is not None:
            keep.append((q, k, v))
        qh, kh, vh = (z.reshape(b, n, w.heads, dh).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(qh @ kh.transpose(-1, -2) / dh**0.5, dim=-1)
        ctx = (attn @ vh).transpose(1, 2).reshape(b, n, d)
        t = t + F.linear(ctx, *blk.o)
        h = F.layer_norm(t, (d,), *blk.ln2[:2], eps=blk.ln2[2])
        t = t + F.linear(F.gelu(F.linear(h, *blk.fc1)), *blk.fc2)
    if w.norm is not None:
        t = F.layer_norm(t, (d,), *w.norm[:2], eps=w.norm[2])
    logits = []
    for weight, bias, index in w.classifiers:
        pooled = t[:, index] if w.pool == "token" else t[:, w.num_prefix :].mean(1)
        if w.fc_norm is not None:
            pooled = F.layer_norm(pooled, (d,), *w.fc_norm[:2], eps=w.fc_norm[2])
        logits.append(F.linear(pooled, weight, bias))
    return torch.stack(logits).mean(0)


def reference_gradmask(
    w: Weights,
    image: torch.Tensor,
    target: int,
    masks_per_layer: int = 4,
    blocks: list[int] | None = None,
    fill: float = 0.0,
    heads_used: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(map h x w, masks K x h x w) for ONE image (C x H x W), straight from GRADMASK.md."""
    ph, pw = w.patch
    gh, gw = image.shape[-2] // ph, image.shape[-1] // pw
    depth = len(w.blocks)
    blocks = list(range(depth - 1)) if blocks is None else [b % depth for b in blocks]
    # step 1: one forward, gradient of the raw target logit w.r.t. every q, k and v
    keep: list = []
    with torch.enable_grad():
        used = w
        if heads_used is not None:  # a deliberately wrong variant, to show the test can fail
            used = Weights(**{**w.__dict__, "classifiers": w.classifiers[:heads_used]})
        x = image[None].clone().requires_grad_(True)
        logit = reference_forward(used, x, keep)[0, target]
        flat = [z for triple in keep for z in triple]
        grads = torch.autograd.grad(logit, flat, allow_unused=True)
    grads = [torch.zeros_like(z) if g is None else g for z, g in zip(flat, grads)]
    # steps 2-5: group sums, clamp, drop prefix, threshold at the row mean; q, then k, then v
    d = keep[0][0].shape[-1]
    size = d // masks_per_layer
    masks = []
    for proj in range(3):
        for blk in blocks:
            g = grads[3 * blk + proj][0]  # N x D
            for group in range(masks_per_layer):
                row = g[:, group * size : (group + 1) * size].sum(dim=1).clamp(min=0)
                row = row[w.num_prefix :]
                masks.append((row >= row.mean()).float().reshape(gh, gw))
    # steps 6-8: each masked image scored alone; probability-weighted sum of the masks
    heat = torch.zeros(gh, gw)
    with torch.no_grad():
        for mask in masks:
            up = mask.repeat_interleave(ph, dim=0).repeat_interleave(pw, dim=1)
            masked = image * up + fill * (1 - up)
            prob = torch.softmax(reference_forward(w, masked[None]), dim=-1)[0, target]
            heat += prob * mask
    return heat, torch.stack(masks)


def _model(name: str) -> tuple[nn.Module, Weights]:
    """A tiny model with its random weights spread out (see :func:`spread_weights`)."""
    model = spread_weights(MODEL_FACTORIES[name]())
    return model, weights_of(model)


def spread_weights(model: nn.Module, scale: float = 0.2, seed: int = 0) -> nn.Module:
    """Add seeded N(0, scale) noise to every parameter.

    Freshly initialised HF models (std 0.02, zero prefix tokens) attend almost uniformly, so
    a gradient row can hold P values equal to 1e-6 relative; ``row >= mean(row)`` is then
    decided by float rounding, which no independent implementation reproduces bit for bit.
    Spread weights keep every threshold well clear of its row's mean.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return xvit.get_adapter(model).forward_logits(x)


# --- the reference is faithful to the models ------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_reference_forward_matches_the_model(name: str) -> None:
    model, w = _model(name)
    x = model_input(model)
    with torch.no_grad():
        own = model(x) if type(model).__module__.startswith("timm.") else model(pixel_values=x)
    own = own if isinstance(own, torch.Tensor) else own.logits
    torch.testing.assert_close(reference_forward(w, x), own, rtol=1e-5, atol=1e-5)


# --- GradMask equals the reference ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_gradmask_matches_reference(name: str) -> None:
    model, w = _model(name)
    x = model_input(model, batch=2)
    targets = _logits(model, x).argmax(-1)
    e = xvit.explain("gradmask", model, x)
    assert e.targets.tolist() == targets.tolist()
    masks = GradMask().masks(xvit.get_adapter(model), x, targets)
    for i in range(len(x)):
        ref_map, ref_masks = reference_gradmask(w, x[i], int(targets[i]))
        assert torch.equal(masks[i], ref_masks)
        torch.testing.assert_close(e.map[i], ref_map, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("m", [1, 8])  # 4, the default, is checked on every model above
def test_mask_count_and_order(m: int) -> None:
    model, w = _model("timm-vit")
    adapter = xvit.get_adapter(model)
    geo = adapter.geometry
    x = model_input(model, batch=1)
    target = torch.tensor([1])
    masks = GradMask(masks_per_layer=m).masks(adapter, x, target)
    assert masks.shape == (1, 3 * (geo.num_blocks - 1) * m, *geo.grid())
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    _, ref_masks = reference_gradmask(w, x[0], 1, masks_per_layer=m)
    assert torch.equal(masks[0], ref_masks)  # q (block-major, then group), then k, then v


@pytest.mark.parametrize(
    ("name", "blocks"),
    [("timm-deit-distilled", "all"), ("hf-vit", [0]), ("hf-vit", [-1, 0]), ("timm-vit-rect", 1)],
)
def test_block_selection(name: str, blocks) -> None:
    model, w = _model(name)
    x = model_input(model, batch=1)
    depth = xvit.get_adapter(model).geometry.num_blocks
    chosen = list(range(depth)) if blocks == "all" else blocks
    chosen = [chosen] if isinstance(chosen, int) else chosen
    e = xvit.explain("gradmask", model, x, target=3, blocks=blocks)
    ref_map, ref_masks = reference_gradmask(w, x[0], 3, blocks=chosen)
    torch.testing.assert_close(e.map[0], ref_map, rtol=RTOL, atol=ATOL)
    masks = GradMask(blocks=blocks).masks(xvit.get_adapter(model), x, torch.tensor([3]))
    assert masks.shape[1] == 3 * len(chosen) * 4
    assert torch.equal(masks[0], ref_masks)


def test_default_blocks_leave_out_the_last() -> None:
    model, _ = _model("hf-vit")
    x = model_input(model, batch=1)
    depth = xvit.get_adapter(model).geometry.num_blocks
    default = xvit.explain("gradmask", model, x, target=0).map
    explicit = xvit.explain("gradmask", model, x, target=0, blocks=list(range(depth - 1))).map
    everything = xvit.explain("gradmask", model, x, target=0, blocks="all").map
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    assert not torch.allclose(default, everything)


def test_fill() -> None:
    model, w = _model("timm-vit-rect")
    x = model_input(model, batch=1)
    e = xvit.explain("gradmask", model, x, target=2, fill=0.7)
    ref_map, _ = reference_gradmask(w, x[0], 2, fill=0.7)
    torch.testing.assert_close(e.map[0], ref_map, rtol=RTOL, atol=ATOL)
    zero_fill, _ = reference_gradmask(w, x[0], 2, fill=0.0)
    assert not torch.allclose(ref_map, zero_fill, rtol=1e-3, atol=1e-5)


def test_masks_per_layer_must_divide_hidden_size() -> None:
    model, _ = _model("timm-vit")
    d = xvit.get_adapter(model).geometry.hidden_size
    bad = next(m for m in range(2, d) if d % m)
    divisors = [k for k in range(1, d + 1) if d % k == 0]
    with pytest.raises(xvit.ParameterError) as info:
        xvit.explain("gradmask", model, model_input(model, batch=1), masks_per_layer=bad)
    assert str(divisors) in str(info.value)
    assert f"masks_per_layer={bad}" in str(info.value)
    for value in (0, -2, 2.0, True):
        with pytest.raises(xvit.ParameterError, match="masks_per_layer"):
            GradMask(masks_per_layer=value)


def test_batch_equals_one_at_a_time() -> None:
    model, _ = _model("hf-deit-teacher")
    x = model_input(model, batch=3, seed=4)
    together = xvit.explain("gradmask", model, x, target=[0, 4, 2])
    for i, t in enumerate([0, 4, 2]):
        alone = xvit.explain("gradmask", model, x[i : i + 1], target=t)
        torch.testing.assert_close(together.map[i], alone.map[0], rtol=RTOL, atol=ATOL)


def test_batch_size_does_not_change_the_map() -> None:
    model, _ = _model("timm-vit-registers")
    x = model_input(model, batch=2)
    small = xvit.explain("gradmask", model, x, batch_size=1).map
    large = xvit.explain("gradmask", model, x, batch_size=1000).map
    torch.testing.assert_close(small, large, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("target", [3, [1, 4], None])
def test_targets(target) -> None:
    model, w = _model("timm-vit")
    x = model_input(model, batch=2, seed=1)
    if target is None:
        expected = _logits(model, x).argmax(-1).tolist()
    elif isinstance(target, int):
        expected = [target, target]
    else:
        expected = target
    e = xvit.explain("gradmask", model, x, target=target)
    assert e.targets.tolist() == expected
    for i, t in enumerate(expected):
        ref_map, _ = reference_gradmask(w, x[i], t)
        torch.testing.assert_close(e.map[i], ref_map, rtol=RTOL, atol=ATOL)
    other = [(t + 1) % 5 for t in expected]
    assert not torch.allclose(e.map, xvit.explain("gradmask", model, x, target=other).map)


@pytest.mark.parametrize("name", DISTILLED)
def test_teacher_logit_is_the_mean_of_both_heads(name: str) -> None:
    model, w = _model(name)
    x = model_input(model, batch=1, seed=2)
    with torch.no_grad():
        if type(model).__module__.startswith("timm."):
            feats = model.forward_features(x)
            cls_logits, dist_logits = model.head(feats[:, 0]), model.head_dist(feats[:, 1])
        else:
            out = model(pixel_values=x)
            cls_logits, dist_logits = out.cls_logits, out.distillation_logits
    assert len(w.classifiers) == 2
    assert not torch.allclose(cls_logits, dist_logits)
    torch.testing.assert_close(_logits(model, x), (cls_logits + dist_logits) / 2)
    e = xvit.explain("gradmask", model, x, target=1)
    mean_map, _ = reference_gradmask(w, x[0], 1)
    cls_only, _ = reference_gradmask(w, x[0], 1, heads_used=1)
    torch.testing.assert_close(e.map[0], mean_map, rtol=RTOL, atol=ATOL)
    assert not torch.allclose(e.map[0], cls_only, rtol=1e-3, atol=1e-5)
