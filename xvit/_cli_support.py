"""What every ``xvit`` command shares: the default model, error handling, parameter values.

Kept apart from :mod:`xvit.cli` so that commands defined elsewhere (``xvit bench``,
``xvit demo``) use it without importing the command group.
"""

from __future__ import annotations

import ast
import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ._errors import XvitError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MODEL = "xvit:digits-vit"


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


def parse_value(raw: str) -> Any:
    """A command-line value: a Python literal when it parses, else the string itself.

    Example:
        >>> parse_value("8"), parse_value("[0, 1]"), parse_value("bf16")
        (8, [0, 1], 'bf16')
    """
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
