"""Plugins for tests, installed by hand: a folder on ``sys.path`` holding a ``*.dist-info``.

``importlib.metadata`` finds a distribution wherever a ``<name>-<version>.dist-info`` folder
with a ``METADATA`` file sits on ``sys.path``, and reads its entry points from
``entry_points.txt``: what ``pip install`` writes, without pip.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import xvit


def write_distribution(
    site: Path, name: str, version: str, entry_points: Mapping[str, Mapping[str, str]]
) -> Path:
    """Write the ``dist-info`` folder of distribution ``name`` into ``site`` and return it.

    Args:
        site: The folder that will go on ``sys.path`` (it holds the modules too).
        name: The distribution's name, as in ``pyproject.toml`` (``xvit-saliency``).
        version: Its version.
        entry_points: group -> entry name -> ``module:attribute``.
    """
    info = site / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return info


def _forget(modules: Iterable[str], methods: Iterable[str]) -> None:
    """Unregister ``methods`` and unload ``modules``: the next lookup reads entry points again."""
    for name in methods:
        if name in xvit.list_methods():
            xvit.method_registry.unregister(name)
    for module in modules:
        sys.modules.pop(module, None)
    xvit.method_registry.refresh()


@contextmanager
def on_sys_path(
    site: Path, *, modules: Iterable[str], methods: Iterable[str], first: bool = True
) -> Iterator[Path]:
    """Put ``site`` on ``sys.path`` for the block: first (ahead of anything installed), or last
    (behind site-packages, as an installed copy would be).

    ``methods`` are unregistered and ``modules`` unloaded on entry and on exit, so xvit reads
    the entry points again: inside, it finds what ``site`` adds; afterwards, what it found
    before.
    """
    modules, methods = list(modules), list(methods)
    _forget(modules, methods)
    if first:
        sys.path.insert(0, str(site))
    else:
        sys.path.append(str(site))
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        _forget(modules, methods)
