"""The ``xvit.methods`` package used as the method registry, as before it was renamed.

The registry object used to be bound to ``xvit.methods``, where it hid the subpackage of the
same name (``import xvit.methods.gradmask as gm`` failed). The registry is now
``xvit.method_registry``; code that still treats the package as the registry
(``xvit.methods.unregister(...)``, ``"x" in xvit.methods``, ``from xvit.methods import
methods``) keeps working through :class:`RegistryPackage` and gets a
:class:`DeprecationWarning` naming the new spelling.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ._registration import method_registry

#: The registry attributes and methods the package forwards.
FORWARDED = frozenset(
    {"decorator", "get", "group", "items", "kind", "names", "refresh", "register", "unregister"}
)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} uses the xvit.methods package as the method registry, which is deprecated: "
        f"use {new} (the registry is xvit.method_registry)",
        DeprecationWarning,
        stacklevel=3,
    )


class RegistryPackage(ModuleType):
    """The module type of ``xvit.methods``: a package that answers the registry's protocol,
    with a deprecation warning, for code written when the name meant the registry."""

    def __getattr__(self, name: str) -> Any:
        if name == "methods":
            _deprecated("xvit.methods.methods", "xvit.method_registry")
            return method_registry
        if name in FORWARDED:
            _deprecated(f"xvit.methods.{name}", f"xvit.method_registry.{name}")
            return getattr(method_registry, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __contains__(self, name: object) -> bool:
        _deprecated("'name' in xvit.methods", "'name' in xvit.method_registry")
        return name in method_registry

    def __iter__(self) -> Iterator[str]:
        _deprecated("iterating over xvit.methods", "xvit.method_registry.names()")
        return iter(method_registry.names())

    def __len__(self) -> int:
        _deprecated("len(xvit.methods)", "len(xvit.method_registry.names())")
        return len(method_registry.names())

    def __bool__(self) -> bool:  # a module is true, whatever its length
        return True
