"""A small registry of named objects with entry-point plugins.

One :class:`Registry` instance holds the explanation methods, another the metrics.
Built-ins register themselves when their module is imported; third-party packages
add entries through an entry-point group, loaded lazily the first time a name is
looked up or listed. A plugin that fails to load warns and is skipped.
"""

from __future__ import annotations

import fnmatch
import threading
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from ._errors import UnknownNameError
from ._suggest import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes), with plugins from an entry-point group.

    Args:
        kind: What the entries are, for messages ("method", "metric").
        group: The entry-point group plugins register under, or None for no plugins.
    """

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        self._plugins_loaded = group is None
        self._lock = threading.RLock()

    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Register ``obj`` under ``name``; warns when replacing an existing entry."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        with self._lock:
            if name in self._entries and self._entries[name] is not obj and not overwrite:
                warnings.warn(
                    f"{self.kind} {name!r} is registered twice; the later registration wins",
                    stacklevel=3,
                )
            self._entries[name] = obj
        return obj

    def register_named(self, cls: Any, base: type, caller: str) -> Any:
        """Register the class ``cls`` under its ``name`` attribute, after checking that it
        is a subclass of ``base`` and has a name (``caller`` names the decorator in errors)."""
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{caller} takes a {base.__name__} subclass, got {cls!r}")
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{cls.__name__} must set a class attribute 'name' to be registered")
        entry: Any = cls
        return self.register(name, entry)

    def decorator(self, name: str) -> Callable[[T], T]:
        """A decorator form of :meth:`register`."""

        def wrap(obj: T) -> T:
            return self.register(name, obj)

        return wrap

    def unregister(self, name: str) -> None:
        """Remove ``name``; unknown names raise :class:`~xvit.UnknownNameError`."""
        with self._lock:
            self._load_plugins()
            if name not in self._entries:
                raise self._unknown(name)
            del self._entries[name]

    def get(self, name: str | T) -> T:
        """Look up an entry by name; a registered object is returned as is."""
        with self._lock:
            self._load_plugins()
            if isinstance(name, str):
                if name in self._entries:
                    return self._entries[name]
                raise self._unknown(name)
            if name in self._entries.values():
                return name
        raise UnknownNameError(
            f"{name!r} is not a registered {self.kind}; register it first or pass a name "
            f"from: {', '.join(self.names())}"
        )

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style wildcard."""
        with self._lock:
            self._load_plugins()
            names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) pairs in name order."""
        for name in self.names():
            yield name, self._entries[name]

    def usable(self, names: list[str] | None = None) -> list[str]:
        """``names`` (default: every registered name) without the entries that declare
        themselves unavailable, with one warning naming those and how to install what they
        lack.

        An entry is unavailable when it has an ``unavailable_reason()`` that returns a
        sentence (an :class:`~xvit.Explainer` whose optional dependencies are missing); the
        other entries are always usable.
        """
        names = self.names() if names is None else names
        reasons = {name: unavailable_reason(self.get(name)) for name in names}
        skipped = [f"{name} ({why})" for name, why in reasons.items() if why]
        if skipped:
            warnings.warn(
                f"skipping the {self.kind}s that cannot run here: {'; '.join(skipped)}",
                stacklevel=2,
            )
        return [name for name in names if not reasons[name]]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def refresh(self) -> None:
        """Forget which plugins were loaded; the next lookup reads the entry points again."""
        with self._lock:
            self._plugins_loaded = self.group is None

    def _unknown(self, name: str) -> UnknownNameError:
        names = self.names()
        hint = did_you_mean(name, names)
        known = ", ".join(names) or "(none)"
        return UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}")

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.group is None:
            return
        self._plugins_loaded = True  # set first: a plugin may look names up while loading
        for ep in _entry_points(self.group):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break xvit
                warnings.warn(
                    f"skipping {self.kind} plugin {ep.name!r} ({ep.value}): failed to load: {exc}",
                    stacklevel=3,
                )
                continue
            self._entries.setdefault(ep.name, obj)


def unavailable_reason(obj: Any) -> str | None:
    """Why a registry entry cannot run here (its ``unavailable_reason()``), or None."""
    reason = getattr(obj, "unavailable_reason", None)
    return reason() if callable(reason) else None


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=group))
