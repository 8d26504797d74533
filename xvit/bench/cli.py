"""``xvit bench``: the benchmark runner on the command line (wired in by :mod:`xvit.cli`).

The same command runs distributed under ``torchrun`` (see ``docs/distributed.md``)::

    torchrun --nproc_per_node=8 -m xvit bench --device cuda --out bench-out
"""

from __future__ import annotations

from typing import Any

import click

from .._cli_options import (
    device_option,
    images_option,
    images_per_call_option,
    model_option,
    out_option,
    param_option,
)
from .._cli_support import Selection, build, handle_errors
from ._config import TARGETS
from .runner import run_benchmark

DEFAULT_DATA = "digits"


@click.command("bench")
@model_option()
@click.option(
    "--data",
    default=DEFAULT_DATA,
    show_default=True,
    help="Dataset name, optionally with options: 'imagenet:root=DIR,index_file=F' (values "
    "read as for -p).",
)
@click.option(
    "--methods",
    default="all",
    show_default=True,
    help="Comma-separated method names, or 'all' (every registered method).",
)
@click.option(
    "--metrics",
    default="default",
    show_default=True,
    help="Comma-separated metric names; 'default' (every metric but the expensive ones) or "
    "'all' (every registered metric; docs/metrics.md gives each one's cost).",
)
@images_option(
    "Number of images (the first N of the dataset). Under torchrun write -n or --images: "
    "torchrun's own parser takes --n for an abbreviation of its options."
)
@images_per_call_option(16)
@device_option
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Base seed; every image gets its own seed from it.",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="label",
    show_default=True,
    help="Explain the true label or the predicted class.",
)
@out_option("xvit-bench", "Folder for results.jsonl, table.md, summary.csv/json and curves.png.")
@click.option(
    "--no-resume",
    is_flag=True,
    help="Start over (old results are renamed with a time stamp, never deleted).",
)
@param_option(
    "method or metric",
    "NAME",
    "-p gradmask.masks_per_layer=1 or -p pointing_game.tolerance=2",
)
@click.option(
    "--save-maps",
    is_flag=True,
    help="Also store every method's raw maps in OUT/maps/METHOD.safetensors (read them with "
    "xvit.load_explanation).",
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
    params: tuple[str, ...],
    no_resume: bool,
    **options: Any,
) -> None:
    """Evaluate explanation methods with metrics and print a method x metric table.

    Per-image results are written to OUT/results.jsonl as they are computed; running the
    same command again resumes where an interrupted run stopped. Under torchrun every rank
    takes its share of the images and rank 0 writes the table. Every method, metric and
    parameter is checked before the model loads.
    """
    from ..methods import method_registry
    from ..metrics import metrics as metric_registry

    explainers, metric_list = build(
        [
            Selection(method_registry, methods, "--methods"),
            Selection(metric_registry, metrics, "--metrics"),
        ],
        params,
    )
    # the other options (--n, --images-per-call, --device, --seed, --target, --out,
    # --save-maps, --timeout) are named as run_benchmark's keywords
    results = run_benchmark(
        model, data, explainers, metric_list, resume=not no_resume, progress=True, **options
    )
    for name, path in results.files.items():
        click.echo(f"{name}: {path}", err=True)
