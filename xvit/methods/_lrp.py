"""Layer-wise relevance propagation through a pre-norm ViT rebuilt from its declared parts.

:func:`forward` runs the blocks a family declares (:class:`~xvit.models._prenorm.PreNormViT`)
with the model's own modules and weights, keeping what each relevance rule reads;
:func:`relprop` sends a relevance on the logits back through them with the rules of Chefer,
Gur & Wolf's ViT code (``modules/layers_ours.py`` and ``baselines/ViT/ViT_LRP.py`` of
hila-chefer/Transformer-Explainability):

- Linear: the alpha-beta rule on positive and negative parts of weights and inputs, without
  the bias (beta = alpha - 1);
- the two matrix products of attention (q k^T and A v): the input-times-gradient share of each
  factor, each halved;
- a residual sum: each input's share, rescaled so the shares keep the proportions of their
  absolute sums and together carry the incoming relevance's sum (per image here, where the
  authors' batch of one sums over the whole tensor);
- a copy used twice (the residual branch point): the sum of both relevances;
- norms, activations, dropout, softmax and layer scale pass relevance on unchanged.

Divisions use the authors' stabiliser (:func:`safe_divide`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models._prenorm import PreNormBlock, PreNormViT

#: The stabiliser of every division (the authors' value).
EPS = 1e-9


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + 1e-9)`` (1e-9 more where that sum is 0), and 0 where ``b`` is 0.

    Example:
        >>> safe_divide(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.0]))
        tensor([2., 0.])
    """
    den = b + EPS
    den = den + (den == 0).to(den.dtype) * EPS
    return a / den * (b != 0).to(b.dtype)


def linear_rule(
    r: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Relevance on the input ``x`` of a Linear with ``weight`` from ``r`` on its output: the
    alpha-beta rule, bias left out."""

    def share(w_pos: torch.Tensor, w_neg: torch.Tensor) -> torch.Tensor:
        s = safe_divide(r, F.linear(x_pos, w_pos) + F.linear(x_neg, w_neg))
        return x_pos * (s @ w_pos) + x_neg * (s @ w_neg)

    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    beta = alpha - 1
    activators = share(w_pos, w_neg)
    if beta == 0:
        return alpha * activators
    return alpha * activators - beta * share(w_neg, w_pos)


def matmul_rule(
    r: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance on both factors of ``a @ b`` from ``r`` on the product (not yet halved)."""
    s = safe_divide(r, a @ b)
    return a * (s @ b.transpose(-1, -2)), b * (a.transpose(-1, -2) @ s)


def _per_image(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first, kept for broadcasting."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True)


def add_rule(r: torch.Tensor, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Relevance on each summand of ``sum(parts)`` from ``r`` on the sum, renormalised per
    image: summand i carries ``|sum_i| / sum_j |sum_j|`` of the relevance's sum."""
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    s = safe_divide(r, total)
    shares = [p * s for p in parts]
    sums = [_per_image(sh) for sh in shares]
    absolute = sums[0].abs()
    for sm in sums[1:]:
        absolute = absolute + sm.abs()
    carried = _per_image(r)
    return [
        sh * safe_divide(safe_divide(sm.abs(), absolute) * carried, sm)
        for sh, sm in zip(shares, sums, strict=True)
    ]


def copy_rule(rs: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Relevance on ``x`` from the relevances ``rs`` of its copies."""
    s = safe_divide(rs[0], x)
    for r in rs[1:]:
        s = s + safe_divide(r, x)
    return x * s


@dataclass
class BlockTrace:
    """What one block's rules read: the block's input ``x``, the normed ``n1``, q, k, v and
    the probabilities (B x heads x N x d or N x N), the heads' output ``o`` (B x N x D), the
    attention branch ``b1``, the middle sum ``mid``, the normed ``n2``, the activation ``h``
    and the MLP branch ``b2``."""

    x: torch.Tensor
    n1: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn: torch.Tensor
    o: torch.Tensor
    b1: torch.Tensor
    mid: torch.Tensor
    n2: torch.Tensor
    h: torch.Tensor
    b2: torch.Tensor


@dataclass
class Trace:
    """One forward of the rebuilt model: the blocks' traces, the final normed tokens, what
    each head read and gave, and the logits."""

    blocks: list[BlockTrace]
    normed: torch.Tensor
    read: list[torch.Tensor]
    outputs: list[torch.Tensor]
    logits: torch.Tensor


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """B x N x (heads d) as B x heads x N x d."""
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def qkv_weight(block: PreNormBlock) -> torch.Tensor:
    """The q, k and v weights stacked as one fused [q | k | v] projection."""
    return torch.cat([layer.weight for layer in block.qkv], dim=0)


def _block(block: PreNormBlock, x: torch.Tensor) -> BlockTrace:
    n1 = block.norm1(x)
    projected = torch.cat([_linear(n1, layer) for layer in block.qkv], dim=-1)
    q, k, v = (_heads(t, block.num_heads) for t in projected.chunk(3, dim=-1))
    attn = ((q @ k.transpose(-1, -2)) * block.scale).softmax(dim=-1)
    o = (attn @ v).transpose(1, 2).flatten(2)
    b1 = block.ls1(_linear(o, block.proj))
    mid = x + b1
    n2 = block.norm2(mid)
    h = block.act(_linear(n2, block.fc1))
    b2 = block.ls2(_linear(h, block.fc2))
    return BlockTrace(x, n1, q, k, v, attn, o, b1, mid, n2, h, b2)


def forward(parts: PreNormViT, tokens: torch.Tensor) -> Trace:
    """The rebuilt forward from ``tokens`` (B x N x D, the sequence entering the first
    block), with gradients as the caller has them enabled."""
    traces: list[BlockTrace] = []
    x = tokens
    for block in parts.blocks:
        t = _block(block, x)
        traces.append(t)
        x = t.mid + t.b2
    normed = parts.norm(x)
    if parts.readout == "rows":
        read = [parts.head_norm(normed[:, i]) for i in range(len(parts.heads))]
    else:
        read = [parts.head_norm(normed[:, parts.mean_from :].mean(dim=1))]
    outputs = [_linear(r, head) for r, head in zip(read, parts.heads, strict=True)]
    logits = outputs[0]
    for out in outputs[1:]:
        logits = logits + out
    if len(outputs) > 1:
        logits = logits / len(outputs)
    return Trace(traces, normed, read, outputs, logits)


def _head_relprop(parts: PreNormViT, trace: Trace, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """Relevance on the last block's output tokens from ``r`` on the logits."""
    k = len(trace.outputs)
    shares = add_rule(r, [out / k for out in trace.outputs]) if k > 1 else [r]
    tokens = torch.zeros_like(trace.normed)
    for i, (share, read, head) in enumerate(zip(shares, trace.read, parts.heads, strict=True)):
        on_read = linear_rule(share, read, head.weight, alpha)  # head_norm passes it on
        if parts.readout == "rows":
            row = trace.normed[:, i]
            tokens[:, i] = row * safe_divide(on_read, row)
        else:
            rows = trace.normed[:, parts.mean_from :]
            mean = rows.mean(dim=1, keepdim=True)
            s = safe_divide(on_read.unsqueeze(1), mean) / rows.shape[1]
            tokens[:, parts.mean_from :] = rows * s
    return tokens  # the final norm passes it on


def _block_relprop(
    block: PreNormBlock, t: BlockTrace, r: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance on the block's input from ``r`` on its output, and the relevance of its
    attention probabilities (B x heads x N x N)."""
    r_mid, r_b2 = add_rule(r, [t.mid, t.b2])
    r_h = linear_rule(r_b2, t.h, block.fc2.weight, alpha)
    r_n2 = linear_rule(r_h, t.n2, block.fc1.weight, alpha)
    r = copy_rule([r_mid, r_n2], t.mid)
    r_x, r_b1 = add_rule(r, [t.x, t.b1])
    r_o = _heads(linear_rule(r_b1, t.o, block.proj.weight, alpha), block.num_heads)
    r_attn, r_v = matmul_rule(r_o, t.attn, t.v)
    r_attn, r_v = r_attn / 2, r_v / 2
    r_q, r_kt = matmul_rule(r_attn, t.q, t.k.transpose(-1, -2))
    r_qkv = torch.cat([(r_q / 2), (r_kt.transpose(-1, -2) / 2), r_v], dim=1)  # B x 3h x N x d
    b, _, n, _ = r_qkv.shape
    r_qkv = r_qkv.transpose(1, 2).reshape(b, n, -1)  # [q | k | v], each (heads d)
    r_n1 = linear_rule(r_qkv, t.n1, qkv_weight(block), alpha)
    return copy_rule([r_x, r_n1], t.x), r_attn


def relprop(
    parts: PreNormViT, trace: Trace, r: torch.Tensor, alpha: float, start_layer: int = 0
) -> list[torch.Tensor]:
    """The relevance of every block's attention probabilities from ``start_layer`` on (first
    block first), from the relevance ``r`` (B x classes) on the logits."""
    r = _head_relprop(parts, trace, r, alpha)
    cams: list[torch.Tensor] = []
    for i in range(len(parts.blocks) - 1, start_layer - 1, -1):
        r, cam = _block_relprop(parts.blocks[i], trace.blocks[i], r, alpha)
        cams.append(cam)
    return cams[::-1]
