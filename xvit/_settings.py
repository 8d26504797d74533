"""Settings written as text, ``[NAME.]KEY=VALUE``: the one parser and its one rule.

It reads the ``-p`` items of the commands (``-p rise.num_masks=500``) and the options of a
dataset spec (``imagenet:root=/data/imagenet,index_file=subset.txt``). The rule: the key is
what precedes ``=`` (``-`` read as ``_``), its owner whatever precedes the key's last dot, and
the value a Python literal when it parses (``8``, ``0.5``, ``None``, ``[0, 1]``), else the
text itself.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import ParameterError


def parse_value(raw: str) -> Any:
    """A value written as text: a Python literal when it parses, else the text itself.

    Example:
        >>> parse_value("8"), parse_value("[0, 1]"), parse_value("bf16"), parse_value("/data")
        (8, [0, 1], 'bf16', '/data')
    """
    try:
        return ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw


@dataclass(frozen=True)
class Setting:
    """One ``[NAME.]KEY=VALUE`` item.

    Attributes:
        text: The item as given, for messages.
        owner: The component it names (``rise``), or None for every one that has ``key``.
        key: The parameter (``-`` read as ``_``).
        value: The value, parsed by :func:`parse_value`.
    """

    text: str
    owner: str | None
    key: str
    value: Any


def parse_settings(
    items: Sequence[str],
    *,
    what: str = "-p",
    example: str = "-p num_masks=500 or -p rise.num_masks=500",
    owned: bool = True,
) -> list[Setting]:
    """Items as :class:`Setting` s, by the module's rule.

    Args:
        items: The items, one ``[NAME.]KEY=VALUE`` each.
        what: What the items are, to start an error message (``-p``, ``dataset option``).
        example: Well-formed items, for the error message.
        owned: Whether an item may name its owner (``NAME.KEY=VALUE``).

    Raises:
        ParameterError: An item without ``=``, without a key, with an empty owner, or with an
            owner where ``owned`` is False.

    Example:
        >>> [(s.owner, s.key, s.value) for s in parse_settings(["rise.num-masks=8", "seed=1"])]
        [('rise', 'num_masks', 8), (None, 'seed', 1)]
    """
    form = "KEY=VALUE or NAME.KEY=VALUE" if owned else "KEY=VALUE"
    out = []
    for item in items:
        left, eq, raw = item.partition("=")
        owner, dot, key = left.strip().rpartition(".")
        key = key.strip().replace("-", "_")
        if not eq or not key or (dot and not (owned and owner.strip())):
            raise ParameterError(f"{what} {item!r} is not {form}; write e.g. {example}")
        out.append(Setting(item, owner.strip() if dot else None, key, parse_value(raw)))
    return out


def parse_spec(spec: str, *, what: str, example: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:KEY=VALUE,KEY=VALUE``: the name and its options, by the module's
    rule (an option names no owner).

    Args:
        spec: The text.
        what: What an option is, for messages (``dataset option``).
        example: A well-formed spec, for messages.

    Example:
        >>> parse_spec("imagenet:root=/data/imagenet,n=50", what="option", example="x:n=1")
        ('imagenet', {'root': '/data/imagenet', 'n': 50})
    """
    name, _, rest = spec.partition(":")
    items = [item.strip() for item in rest.split(",") if item.strip()]
    settings = parse_settings(items, what=what, example=repr(example), owned=False)
    return name.strip(), {s.key: s.value for s in settings}
