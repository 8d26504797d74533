"""The parts of a standard pre-norm ViT classifier, as a family declares them.

A family whose blocks all have the textbook pre-norm shape names each block's modules in a
:class:`PreNormBlock` and the model's ends in a :class:`PreNormViT`. Methods that must follow
a relevance through every layer (Chefer's LRP, ``xvit.methods.chefer_lrp``) rebuild the
forward from these modules, with the model's own weights, instead of one copy of the forward
per family; the adapter then has the :data:`PRENORM` capability. Everything here only names
modules: nothing is run or changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

#: The adapter capability of families that declare their pre-norm parts.
PRENORM = "prenorm"

#: How the head reads the last block's tokens: "rows" (head i reads token row i; the logits
#: are the mean of the heads, e.g. CLS alone, or CLS and distillation) or "mean" (one head
#: reads the mean of the rows from ``mean_from`` on).
READOUTS = ("rows", "mean")


@dataclass(frozen=True)
class PreNormBlock:
    """One block ``x -> x + ls1(proj(attn(x))) -> x + ls2(fc2(act(fc1(norm2(x)))))`` with
    ``attn(x) = softmax(q k^T * scale) v`` per head, q, k, v from ``qkv(norm1(x))``.

    Attributes:
        norm1: The norm before attention.
        qkv: One fused Linear whose output is [q | k | v], or the q, k and v Linears.
        num_heads: Attention heads.
        scale: The factor of q k^T before the softmax.
        proj: The attention's output Linear.
        norm2: The norm before the MLP.
        fc1: The MLP's first Linear.
        act: The MLP's activation.
        fc2: The MLP's second Linear.
        ls1: An element-wise scale of the attention branch (layer scale), or Identity.
        ls2: The same for the MLP branch.
    """

    norm1: nn.Module
    qkv: tuple[nn.Linear, ...]
    num_heads: int
    scale: float
    proj: nn.Linear
    norm2: nn.Module
    fc1: nn.Linear
    act: nn.Module
    fc2: nn.Linear
    ls1: nn.Module = field(default_factory=nn.Identity)
    ls2: nn.Module = field(default_factory=nn.Identity)


@dataclass(frozen=True)
class PreNormViT:
    """A pre-norm ViT classifier by its parts.

    Attributes:
        tokens: The module whose output is the token sequence entering the first block
            (B x N x D: prefix tokens, then the patches).
        blocks: The blocks, first to last.
        norm: The norm applied to every token after the last block.
        readout: One of :data:`READOUTS`.
        heads: The classifier Linears: one per row read ("rows"), or one ("mean").
        head_norm: A norm applied to what each head reads (Identity if none).
        mean_from: The first row averaged ("mean" only: the number of prefix tokens).

    Example:
        >>> import xvit
        >>> parts = xvit.get_adapter(xvit.load_model("xvit:digits-vit")).prenorm_parts()
        >>> len(parts.blocks), parts.readout, len(parts.heads), parts.blocks[0].num_heads
        (6, 'rows', 1, 3)
    """

    tokens: nn.Module
    blocks: tuple[PreNormBlock, ...]
    norm: nn.Module
    readout: str
    heads: tuple[nn.Linear, ...]
    head_norm: nn.Module = field(default_factory=nn.Identity)
    mean_from: int = 0
