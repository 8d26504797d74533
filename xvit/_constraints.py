"""Declarative parameter constraints: what each parameter accepts, stated once per class.

A configurable class (a method, a metric) declares a table, in the spirit of scikit-learn's
``_parameter_constraints``::

    parameter_constraints = {
        "num_masks": Integer(low=1),
        "batch_size": (Integer(low=1), Literal("auto")),
        "discard_ratio": Rule(Real(low=0, high=1, high_open=True), note="use 0 to keep all"),
    }

A value passes when any of the alternatives accepts it; it is then converted by that
alternative (``Real`` gives a float). :func:`check_param` checks one value and raises a
:class:`~xvit.ParameterError` that names the owner, the parameter, every accepted form and the
value given. :class:`~xvit._configurable.Configurable` applies the table to every constructor
call, so no class writes its own checks for single parameters; checks that relate several
parameters stay in the constructor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ParameterError


class Constraint:
    """One accepted form of a parameter value."""

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this form."""
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        """The value to keep for an accepted ``value`` (the value itself by default)."""
        return value

    def describe(self) -> str:
        """The form in words, as it reads after "must be"."""
        raise NotImplementedError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Integer(Constraint):
    """An int (not a bool) in ``[low, high]``; either bound may be None.

    Example:
        >>> Integer(low=1).describe(), Integer(low=0).describe(), Integer(2, 5).describe()
        ('a positive integer', 'a non-negative integer', 'an integer in [2, 5]')
    """

    low: int | None = None
    high: int | None = None

    def accepts(self, value: Any) -> bool:
        return (
            _is_int(value)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        )

    def describe(self) -> str:
        if self.high is None and self.low == 1:
            return "a positive integer"
        if self.high is None and self.low == 0:
            return "a non-negative integer"
        if self.low is None and self.high is None:
            return "an integer"
        if self.high is None:
            return f"an integer >= {self.low}"
        if self.low is None:
            return f"an integer <= {self.high}"
        return f"an integer in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number (int or float, not a bool) within optional bounds; kept as float.

    Example:
        >>> Real().describe(), Real(low=0, low_open=True).describe()
        ('a finite number', 'a positive number')
        >>> Real(0, 1, high_open=True).describe(), Real(0, 1).convert(1)
        ('a number in [0, 1)', 1.0)
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        if not _is_real(value) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None:
            return value < self.high if self.high_open else value <= self.high
        return True

    def convert(self, value: Any) -> float:
        return float(value)

    def describe(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            if self.low == 0:
                return "a positive number" if self.low_open else "a non-negative number"
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"a number {'<' if self.high_open else '<='} {self.high:g}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"a number in {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of a fixed set of strings.

    Example:
        >>> OneOf("mean", "max").describe()
        "one of 'mean', 'max'"
    """

    choices: tuple[str, ...]

    def __init__(self, *choices: str) -> None:
        object.__setattr__(self, "choices", tuple(choices))

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.choices))


@dataclass(frozen=True)
class Literal(Constraint):
    """Exactly this value (compared with ``==``; None and bools by identity).

    Example:
        >>> Literal("auto").describe(), Literal(None, "for every block").describe()
        ("'auto'", 'None (for every block)')
    """

    value: Any
    meaning: str = ""

    def accepts(self, value: Any) -> bool:
        if self.value is None or isinstance(self.value, bool):
            return value is self.value
        return type(value) is type(self.value) and value == self.value

    def describe(self) -> str:
        return f"{self.value!r} ({self.meaning})" if self.meaning else repr(self.value)


@dataclass(frozen=True)
class Flag(Constraint):
    """True or False, nothing else (not 0/1, not "yes")."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class Satisfies(Constraint):
    """Any value ``test`` accepts, described by ``description`` (for the rare custom form).

    Example:
        >>> even = Satisfies(lambda v: isinstance(v, int) and v % 2 == 0, "an even integer")
        >>> even.accepts(4), even.accepts(3), even.describe()
        (True, False, 'an even integer')
    """

    test: Callable[[Any], bool]
    description: str
    converter: Callable[[Any], Any] | None = None

    def accepts(self, value: Any) -> bool:
        return bool(self.test(value))

    def convert(self, value: Any) -> Any:
        return value if self.converter is None else self.converter(value)

    def describe(self) -> str:
        return self.description


@dataclass(frozen=True)
class Rule:
    """Alternatives for one parameter, with an optional note appended to its error.

    Example:
        >>> r = Rule(Integer(low=1), Literal("auto"), note="'auto' sizes it from free memory")
        >>> r.describe()
        "a positive integer or 'auto'"
    """

    alternatives: tuple[Constraint, ...]
    note: str = ""

    def __init__(self, *alternatives: Constraint, note: str = "") -> None:
        if not alternatives or not all(isinstance(a, Constraint) for a in alternatives):
            raise TypeError("Rule takes one or more Constraint instances")
        object.__setattr__(self, "alternatives", tuple(alternatives))
        object.__setattr__(self, "note", note)

    def describe(self) -> str:
        parts = [a.describe() for a in self.alternatives]
        if len(parts) == 1:
            return parts[0]
        return ", ".join(parts[:-1]) + " or " + parts[-1]


#: What a constraint table maps a parameter name to.
Spec = Constraint | tuple[Constraint, ...] | Rule


def as_rule(spec: Spec) -> Rule:
    """A table entry as a :class:`Rule`."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, Constraint):
        return Rule(spec)
    if isinstance(spec, tuple):
        return Rule(*spec)
    raise TypeError(f"a parameter constraint must be a Constraint, a tuple or a Rule, got {spec!r}")


def check_param(owner: str, name: str, value: Any, spec: Spec) -> Any:
    """``value`` converted by the first alternative of ``spec`` that accepts it.

    Raises:
        ParameterError: No alternative accepts ``value``.

    Example:
        >>> check_param("rise", "batch_size", "auto", (Integer(low=1), Literal("auto")))
        'auto'
        >>> check_param("rise", "num_masks", 0, Integer(low=1))
        Traceback (most recent call last):
        ...
        xvit._errors.ParameterError: rise: num_masks must be a positive integer, got 0
    """
    rule = as_rule(spec)
    for alternative in rule.alternatives:
        if alternative.accepts(value):
            return alternative.convert(value)
    note = f"; {rule.note}" if rule.note else ""
    prefix = f"{owner}: " if owner else ""
    raise ParameterError(f"{prefix}{name} must be {rule.describe()}, got {value!r}{note}")


def check_params(
    owner: str, table: Mapping[str, Spec], values: Mapping[str, Any]
) -> dict[str, Any]:
    """Every entry of ``values`` that ``table`` constrains, checked and converted; the others
    unchanged."""
    return {
        key: check_param(owner, key, value, table[key]) if key in table else value
        for key, value in values.items()
    }
