"""What every ``xvit`` command shares: error handling, and the one rule for choosing methods
and metrics by name and setting their parameters with ``-p`` (read by
:func:`xvit._settings.parse_settings`).

Kept apart from :mod:`xvit.cli` so that commands defined elsewhere (``xvit bench``,
``xvit demo``) use it without importing the command group; the options they share are in
:mod:`xvit._cli_options`.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from ._configurable import Configurable
from ._errors import ParameterError, XvitError
from ._registry import Registry
from ._settings import Setting, parse_settings
from ._suggest import did_you_mean

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn xvit errors into one stderr line and exit 2; other crashes exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except XvitError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            click.echo(
                f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                err=True,
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@dataclass
class Selection:
    """The components of one kind that a command runs, chosen by name.

    Attributes:
        registry: Where the names are looked up (methods, metrics).
        spec: The names as given: comma-separated, ``"all"`` for every registered one that
            can run here (:meth:`~xvit._registry.Registry.usable`), or
            ``"default"`` for every one not marked ``expensive``.
        option: The command-line option that chooses them (``--methods``), for messages.
    """

    registry: Registry[Any]
    spec: str
    option: str

    def names(self) -> list[str]:
        """The chosen names, each checked against the registry (unknown: did you mean ...)."""
        kind = self.registry.kind
        if self.spec.strip() == "all":
            return self.registry.usable()
        if self.spec.strip() == "default":
            names = self.registry.usable()
            return [n for n in names if not getattr(self.registry.get(n), "expensive", False)]
        names = [n.strip() for n in self.spec.split(",") if n.strip()]
        if not names:
            raise ParameterError(f"no {kind} given to {self.option}; name one, or 'all'")
        for name in names:
            self.registry.get(name)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ParameterError(
                f"{kind} {', '.join(twice)} listed twice in {self.option}; list each once"
            )
        return names


def build(
    selections: Sequence[Selection],
    params: Sequence[str],
    refused: Sequence[tuple[Registry[Any], str]] = (),
) -> list[list[Any]]:
    """Every selected method/metric, built with its ``-p`` parameters, before any model loads.

    Names and parameters are all checked first (unknown names get "did you mean"), then each
    component is created, so that its constructor validates the values. A setting names its
    owner (``rise.num_masks=500``) or applies to every selected component that has the key
    (``seed=1``); one for its owner overrides a bare one, and a later one an earlier one.

    Args:
        selections: What the command runs, one :class:`Selection` per kind.
        params: The ``-p`` items.
        refused: Registries whose names this command cannot take a setting for, each with the
            reason to print (``xvit explain`` and metrics).

    Returns:
        Per selection, its instances in the order chosen.

    Raises:
        UnknownNameError: A name that is not registered.
        ParameterError: A malformed setting, one no selected component takes, or a bad value.

    Example:
        >>> from xvit import method_registry
        >>> build([Selection(method_registry, "gradmask,rollout", "--methods")],
        ...       ["masks_per_layer=2", "rollout.head_fusion=max"])
        [[GradMask(masks_per_layer=2, ...), AttentionRollout(head_fusion='max', ...)]]
    """
    chosen = _Chosen([(sel, sel.names()) for sel in selections], refused)
    values: list[dict[str, Any]] = [{} for _ in chosen.members]
    settings = parse_settings(params)
    # bare settings first, so that one naming its owner overrides them
    for setting in [s for s in settings if s.owner is None] + [s for s in settings if s.owner]:
        for i in chosen.targets(setting):
            values[i][setting.key] = setting.value
    built: list[list[Any]] = [[] for _ in selections]
    for (k, _name, cls), given in zip(chosen.members, values):
        built[k].append(cls.create(**given))
    return built


class _Chosen:
    """What one command runs, to find the components each setting applies to.

    Attributes:
        chosen: Each selection with its checked names.
        refused: As for :func:`build`.
        members: (selection index, name, class) of every chosen component, in order.
    """

    def __init__(
        self,
        chosen: list[tuple[Selection, list[str]]],
        refused: Sequence[tuple[Registry[Any], str]],
    ) -> None:
        self.chosen = chosen
        self.refused = refused
        self.members: list[tuple[int, str, type[Configurable]]] = [
            (k, name, sel.registry.get(name))
            for k, (sel, names) in enumerate(chosen)
            for name in names
        ]

    def kinds(self) -> str:
        """The kinds chosen, for messages: "method", or "method or metric"."""
        return " or ".join(sel.registry.kind for sel, _ in self.chosen)

    def targets(self, setting: Setting) -> list[int]:
        """Indices into :attr:`members` of the components ``setting`` applies to."""
        members = self.members
        if setting.owner is None:
            hits = [i for i, (_, _, cls) in enumerate(members) if setting.key in cls.param_names()]
            if hits:
                return hits
            accepted = {p for _, _, cls in members for p in cls.param_names()}
            raise ParameterError(
                f"-p {setting.text}: no {self.kinds()} of this run "
                f"({', '.join(name for _, name, _ in members)}) has a parameter "
                f"{setting.key!r}.{did_you_mean(setting.key, accepted)} They accept: "
                f"{', '.join(sorted(accepted)) or '(nothing)'}"
            )
        hits = [i for i, (_, name, _) in enumerate(members) if name == setting.owner]
        for i in hits:
            cls = members[i][2]
            if setting.key not in cls.param_names():
                raise ParameterError(
                    f"-p {setting.text}: {cls.name} has no parameter {setting.key!r}."
                    f"{did_you_mean(setting.key, cls.param_names())} It accepts: "
                    f"{', '.join(cls.param_names()) or '(none)'}"
                )
        if hits:
            return hits
        raise self._not_running(setting)

    def _not_running(self, setting: Setting) -> ParameterError:
        owner = setting.owner or ""
        for sel, names in self.chosen:
            if owner in sel.registry:
                kind = sel.registry.kind
                return ParameterError(
                    f"-p {setting.text}: {kind} {owner!r} is not among the {kind}s of this run "
                    f"({', '.join(names)}); add it: {sel.option} {','.join([*names, owner])}"
                )
        for registry, reason in self.refused:
            if owner in registry:
                return ParameterError(
                    f"-p {setting.text}: {owner!r} is a {registry.kind}; {reason}"
                )
        registries = [sel.registry for sel, _ in self.chosen] + [r for r, _ in self.refused]
        known = [n for r in registries for n in r.names()]
        listed = "; ".join(f"{r.kind}s: {', '.join(r.names())}" for r in registries)
        return ParameterError(
            f"-p {setting.text}: no {self.kinds()} is named {owner!r}."
            f"{did_you_mean(owner, known)} Known {listed}"
        )
