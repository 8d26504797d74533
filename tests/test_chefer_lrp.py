"""chefer_lrp against a transcription of the authors' code (hila-chefer/Transformer-Explainability:
modules/layers_ours.py, baselines/ViT/ViT_LRP.py, ViT_explanation_generator.LRP).

The reference below is written layer by layer as the authors' modules are: each layer records
its inputs in its forward and its relprop differentiates its own forward (``gradprop``), one
image at a time (their batch of one, so every sum runs over the whole tensor). It reads the
weights straight from the timm or HF modules, computes the tokens entering the first block
with the model's own embedding code, and knows nothing of xvit's declared parts or engine.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from family_models import FAMILY_FACTORIES

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.methods.chefer_lrp import CheferLRP


# --- the authors' layers, transcribed ------------------------------------------------------
def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


class Layer:
    """A layer that keeps (detached, grad-requiring) copies of its inputs, as their hook does."""

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.X = [x.detach().requires_grad_(True) for x in inputs]
        return self.fn(*inputs)

    def fn(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def relprop(self, R: torch.Tensor, alpha: float) -> list[torch.Tensor]:
        """RelPropSimple: X * d fn / d X applied to R / fn(X)."""
        Z = self.fn(*self.X)
        C = torch.autograd.grad(Z, self.X, safe_divide(R, Z))
        return [x * c for x, c in zip(self.X, C)]


class Lin(Layer):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.w, self.b = weight.detach().clone(), None if bias is None else bias.detach().clone()

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w, self.b)

    def relprop(self, R: torch.Tensor, alpha: float) -> list[torch.Tensor]:
        beta = alpha - 1
        pw, nw = torch.clamp(self.w, min=0), torch.clamp(self.w, max=0)
        px, nx = torch.clamp(self.X[0], min=0), torch.clamp(self.X[0], max=0)

        def f(w1, w2, x1, x2):
            Z1, Z2 = F.linear(x1, w1), F.linear(x2, w2)
            S1 = safe_divide(R, Z1 + Z2)
            S2 = safe_divide(R, Z1 + Z2)
            C1 = x1 * torch.autograd.grad(Z1, x1, S1)[0]
            C2 = x2 * torch.autograd.grad(Z2, x2, S2)[0]
            return C1 + C2

        return [alpha * f(pw, nw, px, nx) - beta * f(nw, pw, px, nx)]


class Add(Layer):
    def fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.add(a, b)

    def relprop(self, R: torch.Tensor, alpha: float) -> list[torch.Tensor]:
        a, b = super().relprop(R, alpha)
        a_sum, b_sum = a.sum(), b.sum()
        a_fact = safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * R.sum()
        b_fact = safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * R.sum()
        return [a * safe_divide(a_fact, a.sum()), b * safe_divide(b_fact, b.sum())]


class Clone(Layer):
    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def relprop2(self, R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
        X = self.X[0]
        Z = [X, X]
        C = torch.autograd.grad(Z, X, [safe_divide(R1, X), safe_divide(R2, X)])[0]
        return X * C


class Einsum(Layer):
    def __init__(self, equation: str) -> None:
        self.equation = equation

    def fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum(self.equation, a, b)


class Select(Layer):
    """IndexSelect of one token row (B x 1 x D)."""

    def __init__(self, row: int) -> None:
        self.row = row

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, torch.tensor([self.row]))


class Mean(Layer):
    """The mean of the rows from ``start`` on (an average-pooled head)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start :].mean(dim=1)


class Block:
    def __init__(self, w: dict, heads: int) -> None:
        self.w, self.heads = w, heads
        self.clone1, self.clone2, self.add1, self.add2 = Clone(), Clone(), Add(), Add()
        self.qkv, self.proj = Lin(*w["qkv"]), Lin(*w["proj"])
        self.fc1, self.fc2 = Lin(*w["fc1"]), Lin(*w["fc2"])
        self.matmul1, self.matmul2 = Einsum("bhid,bhjd->bhij"), Einsum("bhij,bhjd->bhid")

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        dots = self.matmul1(q, k) * (d // self.heads) ** -0.5
        self.attention = dots.softmax(dim=-1)
        out = self.matmul2(self.attention, v)
        return self.proj(out.permute(0, 2, 1, 3).reshape(b, n, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln1, ln2 = self.w["ln1"], self.w["ln2"]
        x1 = self.clone1(x)
        x = self.add1(x1, self.attn(F.layer_norm(x1, x1.shape[-1:], *ln1)))
        x1 = self.clone2(x)
        return self.add2(x1, self.fc2(F.gelu(self.fc1(F.layer_norm(x1, x1.shape[-1:], *ln2)))))

    def relprop(self, cam: torch.Tensor, alpha: float) -> torch.Tensor:
        cam1, cam2 = self.add2.relprop(cam, alpha)
        cam2 = self.fc1.relprop(self.fc2.relprop(cam2, alpha)[0], alpha)[0]
        cam = self.clone2.relprop2(cam1, cam2)
        cam1, cam2 = self.add1.relprop(cam, alpha)
        cam2 = self.proj.relprop(cam2, alpha)[0]
        b, n, d = cam2.shape
        cam2 = cam2.reshape(b, n, self.heads, d // self.heads).permute(0, 2, 1, 3)
        cam_a, cam_v = self.matmul2.relprop(cam2, alpha)
        cam_a, cam_v = cam_a / 2, cam_v / 2
        self.attn_cam = cam_a
        cam_q, cam_k = self.matmul1.relprop(cam_a, alpha)
        cam_q, cam_k = cam_q / 2, cam_k / 2
        cam_qkv = torch.stack([cam_q, cam_k, cam_v]).permute(1, 3, 0, 2, 4).reshape(b, n, 3 * d)
        cam2 = self.qkv.relprop(cam_qkv, alpha)[0]
        return self.clone1.relprop2(cam1, cam2)


def reference_map(
    w: dict, tokens: torch.Tensor, target: int, alpha: float = 1.0, start_layer: int = 0
) -> torch.Tensor:
    """generate_LRP(method="transformer_attribution") for one image (1 x N x D tokens),
    as a flat vector over the patch tokens."""
    blocks = [Block(bw, w["heads"]) for bw in w["blocks"]]
    x = tokens.detach().requires_grad_(True)
    for blk in blocks:
        x = blk.forward(x)
    x = w["norm"](x)
    heads = [Lin(*h) for h in w["heads_lin"]]
    if w["readout"] == "mean":
        pool = [Mean(w["prefix"])]
        outs = [heads[0](w["fc_norm"](pool[0](x)))]
    else:
        pool = [Select(i) for i in range(len(heads))]
        outs = [h(p(x).squeeze(1)) for h, p in zip(heads, pool)]
    if len(outs) == 2:
        mix = Add()
        output = mix(outs[0] / 2, outs[1] / 2)
    else:
        output = outs[0]
    one_hot = torch.zeros_like(output)
    one_hot[0, target] = 1
    grads = torch.autograd.grad((one_hot * output).sum(), [b.attention for b in blocks])
    cams = mix.relprop(one_hot, alpha) if len(outs) == 2 else [one_hot]
    cam = torch.zeros_like(x)
    for c, h, p in zip(cams, heads, pool):
        c = h.relprop(c, alpha)[0]
        if w["readout"] == "rows":
            c = c.unsqueeze(1)
        cam = cam + p.relprop(c, alpha)[0]
    for blk in reversed(blocks[start_layer:]):
        cam = blk.relprop(cam, alpha)
    n = x.shape[1]
    joint = None
    for blk, grad in list(zip(blocks, grads))[start_layer:]:
        c = (grad[0] * blk.attn_cam[0]).clamp(min=0).mean(dim=0) + torch.eye(n)
        joint = c if joint is None else c @ joint
    assert joint is not None
    return joint[0, w["prefix"] :] if w["prefix"] else joint.mean(dim=0)


# --- weights read from the models ----------------------------------------------------------
def _ln(m: torch.nn.LayerNorm) -> tuple:
    return (m.weight, m.bias, m.eps)


def _lin(m: torch.nn.Linear) -> tuple:
    return (m.weight, m.bias)


def timm_weights(model) -> dict:
    blocks = [
        dict(
            ln1=_ln(b.norm1),
            qkv=_lin(b.attn.qkv),
            proj=_lin(b.attn.proj),
            ln2=_ln(b.norm2),
            fc1=_lin(b.mlp.fc1),
            fc2=_lin(b.mlp.fc2),
        )
        for b in model.blocks
    ]
    distilled = hasattr(model, "head_dist")
    avg = model.global_pool == "avg"
    return dict(
        blocks=blocks,
        heads=model.blocks[0].attn.num_heads,
        norm=model.norm,
        fc_norm=model.fc_norm,
        heads_lin=[_lin(model.head)] + ([_lin(model.head_dist)] if distilled else []),
        readout="mean" if avg else "rows",
        prefix=model.num_prefix_tokens,
        tokens=lambda x: model._pos_embed(model.patch_embed(x)),
    )


def hf_weights(model) -> dict:
    backbone = model.vit if hasattr(model, "vit") else model.deit

    def block(layer) -> dict:
        if hasattr(layer, "mlp"):  # transformers 5.x
            a, fc1, fc2 = layer.attention, layer.mlp.fc1, layer.mlp.fc2
            q, k, v, proj = a.q_proj, a.k_proj, a.v_proj, a.o_proj
        else:  # 4.x
            a, fc1, fc2 = layer.attention, layer.intermediate.dense, layer.output.dense
            q, k, v = a.attention.query, a.attention.key, a.attention.value
            proj = a.output.dense
        return dict(
            ln1=_ln(layer.layernorm_before),
            qkv=(torch.cat([q.weight, k.weight, v.weight]), torch.cat([q.bias, k.bias, v.bias])),
            proj=_lin(proj),
            ln2=_ln(layer.layernorm_after),
            fc1=_lin(fc1),
            fc2=_lin(fc2),
        )

    layers = backbone.layers if hasattr(backbone, "layers") else backbone.encoder.layer
    blocks = [block(layer) for layer in layers]
    teacher = hasattr(model, "distillation_classifier")
    heads = (
        [_lin(model.cls_classifier), _lin(model.distillation_classifier)]
        if teacher
        else [_lin(model.classifier)]
    )
    prefix = 2 if getattr(backbone.embeddings, "distillation_token", None) is not None else 1
    return dict(
        blocks=blocks,
        heads=model.config.num_attention_heads,
        norm=backbone.layernorm,
        fc_norm=None,
        heads_lin=heads,
        readout="rows",
        prefix=prefix,
        tokens=backbone.embeddings,
    )


def reference_maps(model, x: torch.Tensor, targets: torch.Tensor, **params) -> torch.Tensor:
    w = timm_weights(model) if hasattr(model, "blocks") else hf_weights(model)
    geo = xvit.get_adapter(model).geometry
    with torch.no_grad():
        tokens = w["tokens"](x)
    maps = [reference_map(w, tokens[i : i + 1], int(t), **params) for i, t in enumerate(targets)]
    return torch.stack(maps).detach().reshape(len(x), *geo.grid(*x.shape[-2:]))


def _compare(model, x: torch.Tensor, **params) -> None:
    before = snapshot(model)
    e = xvit.explain("chefer_lrp", model, x, **params)
    assert snapshot(model) == before
    ref = reference_maps(model, x, e.targets, **params)
    assert ref.abs().max() > 0
    torch.testing.assert_close(e.map, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_equals_the_authors_on_the_digits_vit() -> None:
    model = xvit.load_model("xvit:digits-vit")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _compare(model, x)


#: every token layout and head of the families that declare pre-norm parts
TINY = ["timm-vit", "timm-deit-distilled", "timm-vit-registers", "timm-vit-avgpool"]


@pytest.mark.parametrize("name", [*TINY, "hf-vit", "hf-deit-teacher"])
def test_equals_the_authors_on_tiny_models(name: str) -> None:
    model = MODEL_FACTORIES[name]()
    _compare(model, model_input(model))


def test_alpha_and_start_layer_as_the_authors() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    _compare(model, model_input(model), alpha=2.0, start_layer=1)


def test_the_reference_is_not_a_copy_of_gae() -> None:
    """The LRP relevance changes the map: it differs from GAE (attention times gradient)."""
    model = xvit.load_model("xvit:digits-vit")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    lrp, gae = xvit.explain("chefer_lrp", model, x), xvit.explain("gae", model, x)
    assert not torch.allclose(lrp.map, gae.map, rtol=1e-2)


def test_other_families_are_refused_naming_the_supported_ones() -> None:
    model = FAMILY_FACTORIES["timm-eva02-fused"]()
    with pytest.raises(xvit.UnsupportedModelError, match=r"chefer_lrp.*'prenorm'.*hf, timm"):
        xvit.explain("chefer_lrp", model, model_input(model))


def test_a_forward_the_parts_do_not_rebuild_is_refused() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    handle = model.blocks[0].mlp.register_forward_hook(lambda _m, _i, out: 2 * out)
    try:
        with pytest.raises(xvit.UnsupportedModelError, match="rebuilt logits differ"):
            xvit.explain("chefer_lrp", model, model_input(model))
    finally:
        handle.remove()


def test_start_layer_past_the_blocks_is_refused() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    with pytest.raises(xvit.ParameterError, match="start_layer=9"):
        xvit.explain(CheferLRP(start_layer=9), model, model_input(model))
