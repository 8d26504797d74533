"""``xvit bench``: the benchmark runner on the command line (wired in by :mod:`xvit.cli`).

The same command runs distributed under ``torchrun`` (see ``docs/distributed.md``)::

    torchrun --nproc_per_node=8 -m xvit bench --device cuda --out bench-out
"""

from __future__ import annotations

import click

from .._cli_support import DEFAULT_MODEL, Selection, build, handle_errors, param_help

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
    metavar="[NAME.]KEY=VALUE",
    help="A method or metric parameter, e.g. -p gradmask.masks_per_layer=1 or "
    "-p pointing_game.tolerance=2. " + param_help("method or metric", "NAME"),
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
    takes its share of the images and rank 0 writes the table. Every method, metric and
    parameter is checked before the model loads.
    """
    from ..methods import method_registry
    from ..metrics import metrics as metric_registry
    from .runner import run_benchmark

    explainers, metric_list = build(
        [
            Selection(method_registry, methods, "--methods"),
            Selection(metric_registry, metrics, "--metrics"),
        ],
        params,
    )
    results = run_benchmark(
        model,
        data,
        methods=explainers,
        metrics=metric_list,
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
