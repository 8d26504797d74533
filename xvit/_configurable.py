"""Keyword-configured components (methods, metrics): parameters read from ``__init__``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ._constraints import Spec, as_rule, check_params
from ._errors import ParameterError
from ._suggest import did_you_mean

C = TypeVar("C", bound="Configurable")


class Configurable:
    """A component configured by keyword arguments to ``__init__``, each kept as an attribute
    of the same name, so that its parameters can be listed, validated and reported.

    A subclass declares what each parameter accepts in ``parameter_constraints`` (see
    :mod:`xvit._constraints`); every call of its ``__init__`` checks and converts the arguments
    against that table (merged with its bases' tables) before the body runs, so a constructor
    only stores values and checks how parameters relate to each other. A table entry for a
    name that ``__init__`` does not take is an error when the class is defined.

    Example:
        >>> class Blur(Configurable):
        ...     name = "blur"
        ...     def __init__(self, *, sigma: float = 1.0):
        ...         self.sigma = sigma
        >>> Blur.param_names(), Blur.defaults(), Blur.create(sigma=2.0).params()
        (['sigma'], {'sigma': 1.0}, {'sigma': 2.0})
        >>> from xvit._constraints import Real
        >>> class Sharpen(Configurable):
        ...     name = "sharpen"
        ...     parameter_constraints = {"amount": Real(low=0)}
        ...     def __init__(self, *, amount: float = 1):
        ...         self.amount = amount
        >>> Sharpen(amount=2).amount, Sharpen.describe_params()["amount"]
        (2.0, 'a non-negative number (default 1)')
        >>> Sharpen(amount=-1)
        Traceback (most recent call last):
        ...
        xvit._errors.ParameterError: sharpen: amount must be a non-negative number, got -1
    """

    #: Registry name.
    name: ClassVar[str] = ""
    #: One line for listings.
    summary: ClassVar[str] = ""
    #: The paper that defines it.
    paper: ClassVar[str] = ""
    #: Whether it draws random numbers (then it takes a ``seed``, see :mod:`xvit._seeds`).
    randomized: ClassVar[bool] = False
    #: What each parameter accepts: name -> Constraint, tuple of alternatives, or Rule.
    parameter_constraints: ClassVar[dict[str, Spec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = cls.constraints()
        accepted = set(cls.param_names())
        stray = sorted(set(table) - accepted)
        if stray:
            raise TypeError(
                f"{cls.__name__}.parameter_constraints names {', '.join(stray)}, which "
                f"__init__ does not take"
            )
        for spec in table.values():
            as_rule(spec)  # a malformed entry fails here, at class definition
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_checks_constraints", False):
            cls.__init__ = _checking(init)  # type: ignore[method-assign]

    @classmethod
    def constraints(cls) -> dict[str, Spec]:
        """The constraint table of this class, its bases' tables included (its own wins)."""
        table: dict[str, Spec] = {}
        for klass in reversed(cls.__mro__):
            table.update(klass.__dict__.get("parameter_constraints", {}))
        return table

    @classmethod
    def describe_params(cls) -> dict[str, str]:
        """Each parameter's accepted values and default in words, for help texts.

        Parameters without a constraint are described by their default only.
        """
        table = cls.constraints()
        defaults = cls.defaults()
        out = {}
        for name in cls.param_names():
            words = as_rule(table[name]).describe() if name in table else ""
            if name in defaults:
                default = f"default {defaults[name]!r}"
                words = f"{words} ({default})" if words else default
            out[name] = words
        return out

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


def _checking(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` preceded by the check of its arguments against the class's constraint table.

    The wrapper shares ``init``'s keyword defaults and reads its signature at every call, so
    defaults changed on ``cls.__init__`` (e.g. ``__kwdefaults__`` patched in a test) apply.
    """

    @functools.wraps(init)
    def checked_init(self: Configurable, *args: Any, **kwargs: Any) -> None:
        signature = inspect.signature(init)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        owner = type(self).name or type(self).__name__
        values = {k: v for k, v in bound.arguments.items() if k != "self"}
        kinds = {p.name: p.kind for p in signature.parameters.values()}
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if any(kinds[k] in variadic for k in values):
            init(self, *args, **kwargs)  # a variadic __init__ checks its own arguments
            return
        init(self, **check_params(owner, type(self).constraints(), values))

    checked_init.__kwdefaults__ = init.__kwdefaults__  # type: ignore[attr-defined]
    checked_init._checks_constraints = True  # type: ignore[attr-defined]
    return checked_init
