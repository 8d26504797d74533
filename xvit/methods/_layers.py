"""What the methods that read one layer's token output share (Grad-CAM, ViT-CX): the
``layer`` parameter, its resolution against the model, and tokens as patch feature maps."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._constraints import Integer, Literal, Rule, Satisfies, check_param
from .._errors import CaptureError, ParameterError
from ..models._base import ModelAdapter

#: The constraint of a ``layer`` parameter; the range of a block index and the membership
#: of a module are checked against the model at call time (:func:`resolve_layer`).
LAYER = Rule(
    Literal(None, "the last block's first LayerNorm"),
    Satisfies(Integer().accepts, "a block index (negative counts from the end)"),
    Satisfies(lambda value: isinstance(value, nn.Module), "a module of the model"),
)


def resolve_layer(adapter: ModelAdapter, layer: Any, method: str) -> nn.Module:
    """The module whose token output a method reads.

    ``None`` is the last block's first LayerNorm (timm ``blocks[-1].norm1``, HF
    ``layernorm_before``); an int picks that block's first LayerNorm (negative counts from
    the end); a module must be part of the model.
    """
    layer = check_param(method, "layer", layer, LAYER)
    blocks = adapter.blocks()
    if layer is None:
        return blocks[-1].norm1
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in adapter.model.modules()):
            raise ParameterError(
                f"{method}: layer {type(layer).__name__} is not a submodule of this model; pass "
                f"one of its own modules (e.g. model.blocks[-1].norm1) or a block index"
            )
        return layer
    n = len(blocks)
    if not -n <= layer < n:
        raise ParameterError(
            f"{method}: layer={layer} is out of range for a model with {n} blocks "
            f"(valid: {-n} .. {n - 1})"
        )
    return blocks[layer].norm1


def tokens_to_grid(
    tokens: torch.Tensor, adapter: ModelAdapter, size: tuple[int, int], method: str
) -> torch.Tensor:
    """B x N x D token outputs as B x D x h x w patch feature maps (prefix tokens dropped)."""
    geo = adapter.geometry
    gh, gw = geo.grid(*size)
    prefix = geo.num_prefix_tokens
    if tokens.dim() != 3 or tokens.shape[1] != prefix + gh * gw:
        raise CaptureError(
            f"{method}: the layer's output has shape {tuple(tokens.shape)}, but a token sequence "
            f"B x {prefix + gh * gw} x D ({prefix} prefix tokens + {gh}x{gw} patches) was "
            f"expected; pick a layer inside a transformer block (e.g. its norm1)"
        )
    patches = tokens[:, prefix:, :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)
