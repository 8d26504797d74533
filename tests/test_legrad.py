"""LeGrad equals the authors' computation (WalBouss/LeGrad, ``LeWrapper.compute_legrad_clip``)
re-implemented here for a classifier: each block's own forward is written out (as the
authors' hooked block forward does) to keep its attention map and output tokens, each
block's tokens are mean-pooled, normed and classified, and the gradient of the target logit
w.r.t. that block's attention map is ReLU'd, averaged over heads and query rows, summed over
the blocks from the start layer and min-max scaled per image (on the patch grid: xvit keeps
maps there, the authors upsample first)."""

from __future__ import annotations

import pytest
import torch
from family_models import FAMILY_FACTORIES
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot

TOL = dict(rtol=1e-4, atol=1e-6)


def timm_blocks(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A timm ViT's forward written out: every block's attention map and output tokens."""
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    attention_maps, outputs = [], []
    for block in model.blocks:
        a = block.attn
        y = block.norm1(h)
        b, n, c = y.shape
        q, k, v = a.qkv(y).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(q), a.k_norm(k)
        attention = ((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attention_maps.append(attention)
        mixed = (attention @ v).transpose(1, 2).reshape(b, n, c)
        h = h + block.ls1(a.proj(a.norm(mixed)))
        h = h + block.ls2(block.mlp(block.norm2(h)))
        outputs.append(h)
    return attention_maps, outputs


def timm_classify(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    return model.head(model.fc_norm(model.norm(pooled)))


def hf_blocks(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """An HF ViT's own attentions (eager path) and hidden states after every layer."""
    model.config._attn_implementation = "eager"
    out = model(pixel_values=x, output_attentions=True, output_hidden_states=True)
    return list(out.attentions), list(out.hidden_states[1:])


def hf_classify(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.vit.layernorm(pooled))


def reference_legrad(blocks, classify, model, x, target, start=-2, pooling="mean"):
    x = x.clone().requires_grad_(True)
    attention_maps, outputs = blocks(model, x)
    depth = len(outputs)
    start = start if start >= 0 else depth + start
    accumulated = 0
    for layer in range(start, depth):
        feat = outputs[layer]
        pooled = feat.mean(dim=1) if pooling == "mean" else feat[:, 0]
        logits = classify(model, pooled)
        one_hot = torch.nn.functional.one_hot(target, logits.shape[-1]).float()
        score = (one_hot * logits).sum()
        (grad,) = torch.autograd.grad(score, [attention_maps[layer]], retain_graph=True)
        grad = torch.clamp(grad, min=0.0)
        relevance = grad.mean(dim=1).mean(dim=1)[:, 1:]  # heads, then query rows; CLS out
        side = int(relevance.shape[-1] ** 0.5)
        accumulated = accumulated + relevance.reshape(-1, side, side)
    flat = accumulated.reshape(accumulated.shape[0], -1)
    low = flat.min(dim=-1, keepdim=True)[0]
    high = flat.max(dim=-1, keepdim=True)[0]
    return ((flat - low) / (high - low)).reshape(accumulated.shape)


CASES = {
    "digits-vit": (lambda: xvit.load_model("xvit:digits-vit"), timm_blocks, timm_classify),
    "timm-vit": (MODEL_FACTORIES["timm-vit"], timm_blocks, timm_classify),
    "hf-vit": (MODEL_FACTORIES["hf-vit"], hf_blocks, hf_classify),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "params", [{}, {"start_layer": 0}, {"start_layer": 1, "pooling": "model"}], ids=str
)
def test_legrad_equals_the_authors_computation(case: str, params: dict) -> None:
    build, blocks, classify = CASES[case]
    model = build()
    x = model_input(model, batch=3, seed=1)
    target = torch.tensor([0, 3, 1])
    before = snapshot(model)
    ours = xvit.explain("legrad", model, x, target=target, **params).map
    assert snapshot(model) == before
    if case == "timm-vit":  # sanity: the written-out forward is the model's
        torch.testing.assert_close(
            timm_classify(model, blocks(model, x)[1][-1][:, 0]), model(x), **TOL
        )
    reference = reference_legrad(
        blocks,
        classify,
        model,
        x,
        target,
        start=params.get("start_layer", -2),
        pooling=params.get("pooling", "mean"),
    )
    torch.testing.assert_close(ours, reference.detach(), **TOL)


def test_the_pooling_and_start_layer_change_the_map() -> None:
    model = xvit.load_model("xvit:digits-vit")
    x = model_input(model, batch=1)
    maps = [
        xvit.explain("legrad", model, x, target=2, **p).map
        for p in ({}, {"pooling": "model"}, {"start_layer": 0})
    ]
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[0], maps[2])


def test_models_without_a_declared_head_are_refused_clearly() -> None:
    model = FAMILY_FACTORIES["hf-clip-zero-shot"]()
    x = model_input(model, batch=1)
    with pytest.raises(xvit.UnsupportedModelError, match="legrad needs 'head'"):
        xvit.explain("legrad", model, x)


def test_start_layer_out_of_range_is_refused() -> None:
    model = MODEL_FACTORIES["timm-vit"]()  # 3 blocks
    with pytest.raises(xvit.ParameterError, match=r"start_layer=3 is out of range .* -3 \.\. 2"):
        xvit.explain("legrad", model, model_input(model, batch=1), start_layer=3)


def test_a_map_without_positive_gradient_is_zeros() -> None:
    from xvit.methods.legrad import min_max

    flat = min_max(torch.full((1, 2, 2), 0.5))
    assert torch.equal(flat, torch.zeros(1, 2, 2))
