"""Targets beyond a class index: a score function of the model's output, and the two scores
every method reads from logits (the one it differentiates, the one that weights a mask).

A target is either a (B,) tensor of class indices or a :class:`TargetScore`, a callable
``score(logits) -> scores`` from B' x C logits to B' scores, one per row. Methods never look
at which: they ask :func:`gradient_scores` for what to differentiate and
:func:`masked_scores` for what weights a masked copy, and both answer for either kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._errors import InvalidInputError, XvitError

#: What ``Explanation.targets`` holds for an image explained by a callable target.
SCORE_TARGET = -1

#: The name of a callable target without a readable ``__name__`` (a lambda, a partial).
UNNAMED_SCORE = "custom score"


class TargetScore:
    """A callable target, checked at every call: B' x C logits in, B' finite scores out.

    The function gets the model's logits as float32 (B' x C, the same logits the model's own
    forward gives, also where a method forwards only what the classifier reads) and must
    return a floating (B',) tensor: one score per row, computed from that row alone, so that
    a score does not depend on which other rows share the batch. Masked-scoring methods call
    it on batches of masked copies of different images; gradient methods differentiate the
    sum of its scores over the batch, so it must be differentiable in the logits.

    Args:
        fn: The score function, e.g. ``lambda z: z[:, 3] - z[:, 5]``.

    Example:
        >>> score = TargetScore(lambda z: z[:, 1] + z[:, 0])
        >>> score.name, score(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        ('custom score', tensor([3., 7.]))
        >>> def bad(z):
        ...     return z
        >>> TargetScore(bad)(torch.zeros(2, 3))
        Traceback (most recent call last):
        ...
        xvit._errors.InvalidInputError: target score bad returned shape (2, 3) torch.float32 ...
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any] | TargetScore) -> None:
        inner = fn.fn if isinstance(fn, TargetScore) else fn
        if not callable(inner) or isinstance(inner, torch.Tensor):
            raise InvalidInputError(f"a target score must be callable, got {type(inner).__name__}")
        self.fn: Callable[[torch.Tensor], Any] = inner
        name = getattr(inner, "__name__", None)
        self.name = name if isinstance(name, str) and name.isidentifier() else UNNAMED_SCORE

    def __repr__(self) -> str:
        return f"TargetScore({self.name})"

    def __call__(self, logits: torch.Tensor, *, check_finite: bool = True) -> torch.Tensor:
        """The (B',) float32 scores of B' x C ``logits`` (passed to the function as float32).

        With ``check_finite`` (default) a NaN or infinite score raises at once; loops that
        score many batches pass False and call :meth:`check_finite` once at the end.
        """
        n = int(logits.shape[0])
        try:
            scores = self.fn(logits.float())
        except XvitError:
            raise
        except Exception as exc:
            raise InvalidInputError(
                f"target score {self.name} raised {type(exc).__name__}: {exc}; it is called "
                f"with B x classes float32 logits and must return one score per row"
            ) from exc
        if not isinstance(scores, torch.Tensor):
            raise InvalidInputError(
                f"target score {self.name} returned a {type(scores).__name__}; it must return "
                f"a ({n},) float tensor, one score per row of the logits it gets"
            )
        if tuple(scores.shape) != (n,) or not scores.is_floating_point():
            raise InvalidInputError(
                f"target score {self.name} returned shape {tuple(scores.shape)} "
                f"{scores.dtype} for {n} outputs; it must return a ({n},) float tensor, one "
                f"score per row of the B x classes logits it gets (e.g. z[:, 3], not z[0, 3])"
            )
        scores = scores.float()
        if check_finite:
            self.check_finite(scores)
        return scores

    def check_finite(
        self, scores: torch.Tensor, outputs_finite: torch.Tensor | None = None
    ) -> None:
        """Raise :class:`~xvit.InvalidInputError` when the function gave NaN or inf scores.

        ``outputs_finite`` (B',) says which rows had finite logits: only those rows count
        against the function (the others are the model's fault and reported as such).
        """
        bad = ~torch.isfinite(scores)
        if outputs_finite is not None:
            bad &= outputs_finite.to(bad.device)
        count = int(bad.sum())
        if count:
            raise InvalidInputError(
                f"target score {self.name} returned NaN or infinite values for {count} of "
                f"{scores.shape[0]} finite outputs; make it finite for every image (and every "
                f"masked copy of one), e.g. guard divisions with a small epsilon"
            )


#: A target as methods receive it: class indices (B,) or a score function.
Target = torch.Tensor | TargetScore


def is_score(target: Any) -> bool:
    """Whether ``target`` is a score function (anything callable that is not a tensor)."""
    return isinstance(target, TargetScore) or (
        callable(target) and not isinstance(target, torch.Tensor)
    )


def target_rows(target: Target, start: int, stop: int) -> Target:
    """The target of images ``start .. stop - 1``: those class indices, or the same function.

    Example:
        >>> target_rows(torch.tensor([4, 5, 6]), 1, 3)
        tensor([5, 6])
    """
    return target if isinstance(target, TargetScore) else target[start:stop]


def gradient_scores(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The (B,) scores a gradient method differentiates: each image's raw target logit (not
    its softmax), or the score function of the logits.

    Example:
        >>> z = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> gradient_scores(z, torch.tensor([1, 0]))
        tensor([2., 3.])
        >>> gradient_scores(z, TargetScore(lambda out: out[:, 0] - out[:, 1]))
        tensor([-1., -1.])
    """
    if isinstance(target, torch.Tensor):
        return logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return TargetScore(target)(logits)


def masked_scores(
    logits: torch.Tensor, target: Target, *, check_finite: bool = True
) -> torch.Tensor:
    """The (B,) float32 scores that weight masked copies: the softmax probability of the
    target class, or the score function of the logits (instead of a probability).

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
        >>> masked_scores(z, torch.tensor([1, 1]))
        tensor([0.5000, 0.9933])
    """
    if isinstance(target, torch.Tensor):
        probs = logits.float().softmax(dim=-1)
        return probs.gather(1, target.to(probs.device).unsqueeze(1)).squeeze(1)
    return TargetScore(target)(logits, check_finite=check_finite)
