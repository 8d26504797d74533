"""The gradient pass the gradient-based methods share: one forward of the target logit (or
the target score function) with gradients, while a :class:`~xvit.models.Capture` records
what the method reads; or, for the pixel methods, the gradient with respect to the input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .._errors import InvalidInputError
from .._targets import Target, TargetScore, gradient_scores
from ..models._base import ModelAdapter
from ..models._capture import Capture


def target_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each image's logit (or probability) of its target class: B x classes, (B,) -> (B,).

    Example:
        >>> target_logits(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0]))
        tensor([2., 3.])
    """
    return logits.gather(1, target.unsqueeze(1)).squeeze(1)


@contextmanager
def target_gradient_pass(
    adapter: ModelAdapter, inputs: torch.Tensor, target: Target, **capture: Any
) -> Iterator[tuple[Capture, torch.Tensor, torch.Tensor]]:
    """Run one forward of ``inputs`` with gradients under ``Capture(adapter, **capture)``.

    Yields the capture, the logits and the score to differentiate: the sum over the batch of
    each image's target logit (not its softmax), or of the target score function's scores
    (:func:`~xvit._targets.gradient_scores`), so each image's gradients are its own. The
    block runs with gradients enabled and the hooks in place; they are removed on exit.
    """
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad(), Capture(adapter, **capture) as cap:
        logits = adapter.logits(x)
        yield cap, logits, differentiable_scores(logits, target).sum()


def differentiable_scores(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """:func:`~xvit._targets.gradient_scores`, refusing a score function whose result does not
    depend on the logits through autograd."""
    scores = gradient_scores(logits, target)
    if isinstance(target, TargetScore) and not scores.requires_grad:
        raise InvalidInputError(
            f"target score {target.name} is not differentiable in the logits (its result "
            f"does not require grad): gradient methods differentiate it, so build it from "
            f"the logits with torch operations, without .detach(), .item() or numpy"
        )
    return scores


def input_gradients(adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """d score / d input of each image (B x C x H x W): one forward with gradients and no
    capture; the score is each image's target logit, or the target score function's score.

    Example:
        >>> import xvit
        >>> adapter = xvit.get_adapter(xvit.load_model("xvit:digits-vit"))
        >>> input_gradients(adapter, torch.zeros(2, 3, 64, 64), torch.tensor([1, 7])).shape
        torch.Size([2, 3, 64, 64])
    """
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        score = differentiable_scores(adapter.logits(x), target).sum()
        (grad,) = torch.autograd.grad(score, [x])
    return grad
