"""What the attention-based methods share: capturing every block's attention probabilities
(with or without their gradients), fusing heads, and reading a token row over the patch grid.
"""

from __future__ import annotations

import torch

from .._constraints import OneOf, check_param
from .._errors import CaptureError
from .._targets import Target
from ..models._base import ModelAdapter
from ..models._capture import Capture
from ._gradients import target_gradient_pass

#: The ways attention heads can be combined into one N x N matrix per block.
HEAD_FUSIONS = ("mean", "max", "min")

#: The constraint of a ``head_fusion`` parameter.
HEAD_FUSION = OneOf(*HEAD_FUSIONS)


def fuse_heads(attention: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Combine B x heads x N x N attention into B x N x N by an element-wise mean, max or min.

    Example:
        >>> a = torch.tensor([[[[0.2, 0.8]], [[0.6, 0.4]]]])  # 1 image, 2 heads, 1 x 2
        >>> fuse_heads(a, "mean"), fuse_heads(a, "max")
        (tensor([[[0.4000, 0.6000]]]), tensor([[[0.6000, 0.8000]]]))
    """
    how = check_param("", "head_fusion", how, HEAD_FUSION)
    if how == "mean":
        return attention.mean(dim=1)
    return attention.amax(dim=1) if how == "max" else attention.amin(dim=1)


def patch_row(matrix: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The explaining row of B x N x N token matrices, restricted to the patch columns (B x P).

    With prefix tokens this is the first prefix token's row (CLS). A model with no prefix
    token (global average pooling) has no CLS row; its logits read every token equally, so
    the mean over all token rows is used instead.
    """
    row = matrix[:, 0] if num_prefix_tokens > 0 else matrix.mean(dim=1)
    return row[:, num_prefix_tokens:]


def to_grid(scores: torch.Tensor, adapter: ModelAdapter, inputs: torch.Tensor) -> torch.Tensor:
    """B x P patch scores as B x h x w maps on the model's patch grid for ``inputs``."""
    gh, gw = adapter.geometry.grid(int(inputs.shape[-2]), int(inputs.shape[-1]))
    if scores.shape[-1] != gh * gw:
        raise CaptureError(
            f"the attention has {scores.shape[-1]} patch tokens but the input makes a "
            f"{gh} x {gw} grid; the model's token layout does not match its adapter"
        )
    return scores.reshape(scores.shape[0], gh, gw)


def patch_map(matrix: torch.Tensor, adapter: ModelAdapter, inputs: torch.Tensor) -> torch.Tensor:
    """The B x h x w map of B x N x N token matrices: their explaining row (:func:`patch_row`)
    on the patch grid (:func:`to_grid`)."""
    return to_grid(patch_row(matrix, adapter.geometry.num_prefix_tokens), adapter, inputs)


def capture_attentions(adapter: ModelAdapter, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Every block's attention probabilities (B x heads x N x N, first block first), float32.

    Runs one forward without gradients; the capture switches the model to its eager attention
    path and restores its attention settings afterwards, also when the forward raises.
    """
    with torch.no_grad(), Capture(adapter, attention=True) as cap:
        adapter.logits(inputs)
        attentions = cap.attentions()
    return [a.detach().float() for a in attentions]


def attention_and_grads(
    adapter: ModelAdapter, inputs: torch.Tensor, target: Target
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every block's attention probabilities and the gradient of the target logit (or score)
    w.r.t. them
    (see :func:`~xvit.methods._gradients.target_gradient_pass`).

    Both lists hold B x heads x N x N tensors, first block first, detached and in float32.
    """
    with target_gradient_pass(adapter, inputs, target, attention=True) as (cap, _, score):
        attentions = cap.attentions()
        grads = cap.grads(score, attentions)
    return [a.detach().float() for a in attentions], [g.detach().float() for g in grads]
