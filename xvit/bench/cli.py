"""``xvit bench``: the benchmark runner on the command line (wired in by :mod:`xvit.cli`)."""

from __future__ import annotations

import sys
import traceback

import click

from .._errors import XvitError

DEFAULT_MODEL = "xvit:digits-vit"
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
    "n",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Number of images (the first N of the dataset).",
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
) -> None:
    """Evaluate explanation methods with metrics and print a method x metric table.

    Per-image results are written to OUT/results.jsonl as they are computed; running the
    same command again resumes where an interrupted run stopped.
    """
    from .runner import run_benchmark

    try:
        results = run_benchmark(
            model,
            data,
            methods=methods,
            metrics=metrics,
            n=n,
            batch_size=batch_size,
            device=device,
            seed=seed,
            target=target,
            out_dir=out_dir,
            resume=not no_resume,
            progress=True,
        )
    except XvitError as exc:
        ctx = click.get_current_context()
        if ctx.find_root().params.get("debug"):
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for name, path in results.files.items():
        click.echo(f"{name}: {path}", err=True)
