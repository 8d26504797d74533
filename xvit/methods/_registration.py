"""The method registry: built-ins register on import, plugins through the entry-point group
``xvit.methods``. It is :data:`method_registry` (``xvit.method_registry``); the name
``xvit.methods`` is the subpackage of the methods."""

from __future__ import annotations

from typing import TypeVar

from .._registry import Registry
from ._base import Explainer

E = TypeVar("E", bound=type[Explainer])

#: Every explanation method, by name.
method_registry: Registry[type[Explainer]] = Registry("method", group="xvit.methods")


def register_method(cls: E) -> E:
    """Class decorator: register an :class:`Explainer` subclass under its ``name``.

    Example:
        >>> import torch, xvit
        >>> @xvit.register_method
        ... class Flat(xvit.Explainer):
        ...     name = "flat-doc"
        ...     def compute(self, adapter, inputs, target):
        ...         gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
        ...         return torch.ones(len(inputs), gh, gw, device=inputs.device)
        >>> "flat-doc" in xvit.list_methods()
        True
        >>> xvit.method_registry.unregister("flat-doc")
    """
    return method_registry.register_named(cls, Explainer, "register_method")  # type: ignore[no-any-return]


def get_method(name: str | type[Explainer]) -> type[Explainer]:
    """The method class registered under ``name`` (unknown names list the known ones).

    Example:
        >>> import xvit
        >>> cls = xvit.get_method("gradmask")
        >>> cls.__name__, cls.defaults()["masks_per_layer"]
        ('GradMask', 4)
    """
    return method_registry.get(name)


def list_methods(pattern: str | None = None) -> list[str]:
    """Registered method names, optionally filtered by a wildcard such as ``"grad*"``.

    Example:
        >>> import xvit
        >>> xvit.list_methods("grad*")
        ['gradcam', 'gradmask']
    """
    return method_registry.names(pattern)
