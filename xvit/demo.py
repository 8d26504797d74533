"""``xvit demo``: the offline main job.

Every registered method on the shipped digits model and held-out digits data: a gallery PNG
(images x methods) and the benchmark table (Insertion, Deletion, Pointing Game, energy
Pointing Game, time) on 200 images, with no download, in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ._cli_support import DEFAULT_MODEL, handle_errors

#: Cheaper settings than the methods' defaults, so the whole demo stays within minutes on a
#: laptop CPU (RISE's default of 4000 masks alone would take longer than everything else).
DEMO_PARAMS: dict[str, dict[str, Any]] = {"rise": {"num_masks": 500}}

#: Insertion/Deletion reveal or remove this many image rows of pixels per step (the metrics'
#: default is one row); the curves keep 1 + H / 2 points.
DEMO_ROWS_PER_STEP = 2

#: The Pointing Game's tolerance was defined as 15 px on 224 px ImageNet inputs; the demo scales
#: it with the input size so that it keeps the same meaning on the small digit canvases.
POINTING_TOLERANCE_PX = 15
POINTING_REFERENCE_SIZE = 224


def demo_methods() -> list[Any]:
    """Every registered method, with the demo's cheaper settings where it has them."""
    from .api import make_explainer
    from .methods import list_methods

    return [make_explainer(name, **DEMO_PARAMS.get(name, {})) for name in list_methods()]


def demo_metrics(input_size: tuple[int, int]) -> list[Any]:
    """Every registered metric; the Pointing Game's tolerance scaled to the input size, and
    Insertion/Deletion with :data:`DEMO_ROWS_PER_STEP` rows per step."""
    from .metrics import get_metric, list_metrics

    scale = min(input_size) / POINTING_REFERENCE_SIZE
    out = []
    for name in list_metrics():
        cls = get_metric(name)
        params = {}
        if "tolerance" in cls.param_names():
            params["tolerance"] = POINTING_TOLERANCE_PX * scale
        if "step" in cls.param_names():
            params["step"] = DEMO_ROWS_PER_STEP * input_size[1]
        out.append(cls.create(**params))
    return out


def gallery(model: Any, samples: list[Any], methods: list[Any], path: Path) -> Path:
    """Write a grid of ``samples`` x ``methods`` overlays to ``path``."""
    from .api import explain
    from .viz import compare

    images = [s.image for s in samples]
    targets = [s.label for s in samples]
    explanations = {}
    for explainer in methods:
        params = {"seed": 0} if explainer.randomized else {}
        if params:
            explainer = type(explainer).create(**{**explainer.params(), **params})
        explanations[explainer.name] = explain(explainer, model, images, target=targets)
    fig = compare(images, explanations)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


@click.command("demo")
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model to explain (the shipped digits ViT by default; xvit:digits-deit too).",
)
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Held-out images in the benchmark.",
)
@click.option(
    "--out",
    "out_dir",
    default="xvit-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the gallery, table and curves.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:0, ...")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=25,
    show_default=True,
    help="Images per explanation call.",
)
@handle_errors
def demo_command(model: str, n: int, out_dir: str, device: str, batch_size: int) -> None:
    """Run every method on the embedded model and data: gallery PNG + benchmark table."""
    from .bench.runner import run_benchmark
    from .data import get_dataset
    from .models import get_adapter, load_model

    t0 = time.perf_counter()
    out = Path(out_dir)
    net = load_model(model, device=device)
    adapter = get_adapter(net)
    data = get_dataset("digits", split="test", n=n)
    methods = demo_methods()
    path = gallery(net, [data[i] for i in range(min(6, len(data)))], methods, out / "gallery.png")
    click.echo(f"gallery: {path}", err=True)
    results = run_benchmark(
        net,
        data,
        methods=methods,
        metrics=demo_metrics(adapter.preprocessing.size),
        n=n,
        batch_size=batch_size,
        out_dir=out,
        progress=True,  # a bar on a terminal, plain lines in a log; prints the table
    )
    for name, file in results.files.items():
        click.echo(f"{name}: {file}", err=True)
    click.echo(f"done in {time.perf_counter() - t0:.0f} s", err=True)
