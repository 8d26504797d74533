"""``xvit bench``: the benchmark runner on the command line (wired in by :mod:`xvit.cli`).

The same command runs distributed under ``torchrun`` (see ``docs/distributed.md``)::

    torchrun --nproc_per_node=8 -m xvit bench --device cuda --out bench-out
"""

from __future__ import annotations

from typing import Any

import click

from .._cli_support import DEFAULT_MODEL, handle_errors, parse_value
from .._errors import ParameterError

DEFAULT_DATA = "digits"


@click.command("bench")
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="timm:<name>, hf:<repo id>, an alias (xvit:digits-vit, ...) or a checkpoint.",
)
@click.option(
    "--data",
    default=DEFAULT_DATA,
    show_default=True,
    help="Dataset name, optionally with options: 'imagenet:root=DIR,index_file=F'.",
)
@click.option(
    "--methods",
    default="all",
    show_default=True,
    help="Comma-separated method names, or 'all' (every registered method).",
)
@click.option(
    "--metrics", default="all", show_default=True, help="Comma-separated metric names, or 'all'."
)
@click.option(
    "--n",
    "-n",
    "--images",
    "n",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Number of images (the first N of the dataset). Under torchrun write -n or "
    "--images: torchrun's own parser takes --n for an abbreviation of its options.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images per explanation call.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:0, ...")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Base seed; every image gets its own seed from it.",
)
@click.option(
    "--target",
    type=click.Choice(["label", "prediction"]),
    default="label",
    show_default=True,
    help="Explain the true label or the predicted class.",
)
@click.option(
    "--out",
    "out_dir",
    default="xvit-bench",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for results.jsonl, table.md, summary.csv/json and curves.png.",
)
@click.option(
    "--no-resume",
    is_flag=True,
    help="Start over (old results are renamed with a time stamp, never deleted).",
)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="METHOD.KEY=VALUE",
    help="A method parameter, e.g. -p gradmask.masks_per_layer=1 (repeatable).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Under torchrun: seconds a rank waits for the others (the end of the run waits "
    "for the slowest rank).",
)
@handle_errors
def bench_command(
    model: str,
    data: str,
    methods: str,
    metrics: str,
    n: int,
    batch_size: int,
    device: str,
    seed: int,
    target: str,
    out_dir: str,
    no_resume: bool,
    params: tuple[str, ...],
    timeout: float,
) -> None:
    """Evaluate explanation methods with metrics and print a method x metric table.

    Per-image results are written to OUT/results.jsonl as they are computed; running the
    same command again resumes where an interrupted run stopped. Under torchrun every rank
    takes its share of the images and rank 0 writes the table.
    """
    from .runner import run_benchmark

    results = run_benchmark(
        model,
        data,
        methods=with_params(methods, params),
        metrics=metrics,
        n=n,
        batch_size=batch_size,
        device=device,
        seed=seed,
        target=target,
        out_dir=out_dir,
        resume=not no_resume,
        progress=True,
        timeout=timeout,
    )
    for name, path in results.files.items():
        click.echo(f"{name}: {path}", err=True)


def with_params(methods: str, params: tuple[str, ...]) -> Any:
    """``methods`` as given, or, with ``METHOD.KEY=VALUE`` params, a list in which the
    named methods are built with their parameters (values are Python literals when they
    parse, else strings).

    Example:
        >>> [getattr(m, "masks_per_layer", m) for m in
        ...  with_params("gradmask,attention", ("gradmask.masks_per_layer=1",))]
        [1, 'attention']
    """
    if not params:
        return methods
    from ..methods._registration import get_method, list_methods

    names = list_methods() if methods == "all" else [m.strip() for m in methods.split(",")]
    names = [m for m in names if m]
    by_method: dict[str, dict[str, Any]] = {}
    for item in params:
        key, eq, raw = item.partition("=")
        method, dot, name = key.strip().partition(".")
        if not eq or not dot or not method or not name:
            raise ParameterError(
                f"--param {item!r} is not METHOD.KEY=VALUE; write e.g. "
                f"-p gradmask.masks_per_layer=1"
            )
        if method not in names:
            raise ParameterError(
                f"--param {item!r} is for method {method!r}, which is not among the methods "
                f"of this run ({', '.join(names)}); add it to --methods"
            )
        by_method.setdefault(method, {})[name.replace("-", "_")] = parse_value(raw)
    return [get_method(m).create(**by_method[m]) if m in by_method else m for m in names]
