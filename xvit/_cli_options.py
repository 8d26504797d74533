"""The command-line options that several ``xvit`` commands share, each defined once.

A command takes an option by decorating itself with it (``@device_option``), or with what a
factory makes when the commands differ only in a default or a help text
(``@out_option("xvit-bench", "Folder for ...")``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: The model every command explains unless told otherwise: the shipped digits ViT.
DEFAULT_MODEL = "xvit:digits-vit"

#: What ``--model`` takes.
MODEL_HELP = "timm:<name>, hf:<repo id>, an alias (vit, deit, xvit:digits-vit, ...) or a path."

device_option = click.option(
    "--device", default="cpu", show_default=True, help="cpu, cuda, cuda:0, ..."
)


def model_option(help: str = MODEL_HELP) -> Callable[[F], F]:
    """``--model``, :data:`DEFAULT_MODEL` by default."""
    return click.option("--model", default=DEFAULT_MODEL, show_default=True, help=help)


def out_option(default: str, help: str) -> Callable[[F], F]:
    """``--out``: the folder a command writes to (the parameter ``out_dir``)."""
    return click.option(
        "--out",
        "out_dir",
        default=default,
        show_default=True,
        type=click.Path(file_okay=False),
        help=help,
    )


def images_option(help: str) -> Callable[[F], F]:
    """``--n`` (also ``-n``, ``--images``): how many images of the dataset, 200 by default."""
    return click.option(
        "--n",
        "-n",
        "--images",
        "n",
        type=click.IntRange(min=1),
        default=200,
        show_default=True,
        help=help,
    )


def images_per_call_option(default: int) -> Callable[[F], F]:
    """``--images-per-call`` (old name ``--batch-size``, still read): images handed to a
    method at a time."""
    return click.option(
        "--images-per-call",
        "--batch-size",
        "images_per_call",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help="Images handed to a method at a time (--batch-size is its old name). A method's "
        "own batch_size (-p batch_size=N) counts model inputs per forward.",
    )


def param_help(kinds: str, placeholder: str) -> str:
    """How ``-p`` reads, for the help of a command that runs ``kinds`` ("method").

    Example:
        >>> param_help("method", "METHOD").split(";")[0]
        'METHOD.KEY=VALUE sets KEY of the method METHOD'
    """
    return (
        f"{placeholder}.KEY=VALUE sets KEY of the {kinds} {placeholder}; a bare KEY=VALUE sets "
        f"KEY of every selected {kinds} that has it (an error if none has). VALUE is a Python "
        f"literal when it parses (8, 0.5, None, [0, 1]), else a string. Repeatable."
    )


def param_option(kinds: str, placeholder: str, examples: str) -> Callable[[F], F]:
    """``--param``/``-p`` (the parameter ``params``): settings of the components a command
    runs, read by :func:`xvit._settings.parse_settings`.

    Args:
        kinds: What the settings configure ("method", "method or metric").
        placeholder: The name in the metavar (``METHOD`` in ``[METHOD.]KEY=VALUE``).
        examples: Examples for the help, e.g. ``-p rise.num_masks=500``.
    """
    return click.option(
        "--param",
        "-p",
        "params",
        multiple=True,
        metavar=f"[{placeholder}.]KEY=VALUE",
        help=f"A {kinds} parameter, e.g. {examples}. " + param_help(kinds, placeholder),
    )
