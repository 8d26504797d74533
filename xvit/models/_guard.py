"""Leave the user's model exactly as it was: mode, flags, requires_grad, .grad, hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ._base import model_lock

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)


def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of hooks of each kind on every submodule (for checks and tests).

    Example:
        >>> import torch, xvit
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> before = hook_counts(model)
        >>> _ = xvit.explain("gae", model, torch.randn(1, 3, 64, 64))
        >>> hook_counts(model) == before  # xvit's hooks live for one call only
        True
    """
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                counts[f"{name or '<root>'}.{attr}"] = len(hooks)
    return counts


def has_hooks(modules: list[nn.Module]) -> bool:
    """Whether any of ``modules`` has a hook (of any kind counted by :func:`hook_counts`) or a
    replaced ``forward`` (accelerate's device hooks, a user's patch), or global module hooks
    are registered: code that calls a model's parts in its own way would skip them or hand
    them other inputs.

    Example:
        >>> from torch import nn
        >>> m = nn.Linear(2, 2)
        >>> has_hooks([m])
        False
        >>> _ = m.register_forward_hook(lambda *args: None)
        >>> has_hooks([m])
        True
    """
    from torch.nn.modules import module as torch_module

    for name in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(torch_module, name, None):
            return True
    return any(
        "forward" in vars(m) or any(getattr(m, attr, None) for attr in _HOOK_DICTS) for m in modules
    )


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block; restore every module's mode and every
    parameter's ``requires_grad`` and ``.grad`` afterwards, also when the block raises.

    Example:
        >>> from torch import nn
        >>> m = nn.Linear(2, 2).train()
        >>> with preserved_state(m):
        ...     m.training
        False
        >>> m.training
        True
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        for param, requires_grad, grad in params:
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad


_MISSING = object()


@contextmanager
def attribute_switched(
    model: nn.Module, objects: Iterable[object], name: str, value: Any
) -> Iterator[None]:
    """Set attribute ``name`` of each of ``objects`` (parts of ``model``) to ``value`` for the
    block and put back each one's own value on exit (an attribute it lacked is removed again).

    Runs under the model's lock, so two threads never save and restore each other's settings;
    nested switches of the same attribute restore in turn.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Dropout(0.1), nn.Dropout(0.2))
        >>> with attribute_switched(model, model, "p", 0.0):
        ...     [m.p for m in model]
        [0.0, 0.0]
        >>> [m.p for m in model]
        [0.1, 0.2]
    """
    with model_lock(model):
        saved = [(obj, getattr(obj, name, _MISSING)) for obj in objects]
        try:
            for obj, _ in saved:
                setattr(obj, name, value)
            yield
        finally:
            for obj, old in saved:
                if old is _MISSING:
                    delattr(obj, name)
                else:
                    setattr(obj, name, old)
