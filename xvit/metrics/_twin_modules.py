"""Metric modules that can still be called as their functional twin, with a warning.

``xvit.metrics.insertion`` used to be the function :func:`~xvit.metrics.functional.insertion`,
which hid the module ``xvit/metrics/insertion.py`` (``import xvit.metrics.insertion as m``
gave the function). The name now means the module, as a dotted path should; the functions
live in :mod:`xvit.metrics.functional`. Code written for the old meaning
(``from xvit.metrics import insertion; insertion(model, x, y, maps)``) keeps working: the
module is callable and forwards to its twin with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any


class TwinModule(ModuleType):
    """The module type of a metric file whose functional twin has the module's name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self.__name__.rpartition(".")[2]
        warnings.warn(
            f"calling the module xvit.metrics.{name} is deprecated: the function is "
            f"xvit.metrics.functional.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, name)(*args, **kwargs)


def make_callable(*modules: ModuleType) -> None:
    """Let each metric module be called as the function of the same name it defines."""
    for module in modules:
        module.__class__ = TwinModule
