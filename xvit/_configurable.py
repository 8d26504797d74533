"""Keyword-configured components (methods, metrics): parameters read from ``__init__``."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, TypeVar

from ._errors import ParameterError
from ._suggest import did_you_mean

C = TypeVar("C", bound="Configurable")


class Configurable:
    """A component configured by keyword arguments to ``__init__``, each kept as an attribute
    of the same name, so that its parameters can be listed, validated and reported.

    Example:
        >>> class Blur(Configurable):
        ...     name = "blur"
        ...     def __init__(self, *, sigma: float = 1.0):
        ...         self.sigma = sigma
        >>> Blur.param_names(), Blur.defaults(), Blur.create(sigma=2.0).params()
        (['sigma'], {'sigma': 1.0}, {'sigma': 2.0})
    """

    name: ClassVar[str] = ""

    @classmethod
    def param_names(cls) -> list[str]:
        """The keyword parameters this component accepts."""
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Default value of each parameter."""
        sig = inspect.signature(cls.__init__)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty
        }

    @classmethod
    def create(cls: type[C], **params: Any) -> C:
        """Instantiate with ``params``; unknown names raise an error listing the valid ones."""
        accepted = cls.param_names()
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            hint = did_you_mean(unknown[0], accepted) if len(unknown) == 1 else ""
            raise ParameterError(
                f"{cls.name} got unknown parameter(s) {', '.join(unknown)}.{hint} It accepts: "
                f"{', '.join(accepted) or '(none)'}"
            )
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """The parameter values in use."""
        return {name: getattr(self, name) for name in self.param_names()}
