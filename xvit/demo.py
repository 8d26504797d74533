"""``xvit demo``: the offline main job.

Every registered method on the shipped digits model and held-out digits data, with no
download, in a few minutes on 2 CPU cores. It writes to its output folder ``gallery.png``
(held-out digits x methods, with per-cell Insertion and Deletion AUCs: the README's picture)
and the benchmark on 200 images: ``table.md``, ``summary.csv`` and ``summary.json``
(Insertion, Deletion, Pointing Game, energy Pointing Game, time), the mean curves
``curves.png``, the time per method ``times.png``, and the raw ``results.jsonl``; and in
``mprt/`` the MPRT sanity check (:class:`~xvit.metrics.MPRT`, expensive: each method explains
each image again once per randomisation step) on the first :data:`DEMO_MPRT_IMAGES` digits:
its table and ``mprt.png``, each method's similarity as the layers are randomised.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ._cli_options import (
    device_option,
    images_option,
    images_per_call_option,
    model_option,
    out_option,
)
from ._cli_support import handle_errors

#: Insertion/Deletion reveal or remove this many image rows of pixels per step (the metrics'
#: default is one row); the curves keep 1 + H / 4 points.
DEMO_ROWS_PER_STEP = 4

#: Held-out digits the demo's MPRT run explains again (once per block, head and embeddings).
DEMO_MPRT_IMAGES = 8


def demo_methods() -> list[Any]:
    """Every registered method that can run here, with its ``demo_params`` (cheaper
    settings than its defaults where those would take too long on a laptop CPU)."""
    from .api import make_explainer
    from .methods import get_method, method_registry

    names = method_registry.usable()  # without the methods whose extras are not installed
    return [make_explainer(name, **get_method(name).demo_params) for name in names]


def demo_metrics(input_size: tuple[int, int]) -> list[Any]:
    """Every registered metric that is not ``expensive``, at its defaults (as ``xvit bench``
    runs them; the Pointing
    Game's tolerance follows the input size), but Insertion/Deletion with
    :data:`DEMO_ROWS_PER_STEP` rows per step."""
    from .metrics import get_metric, list_metrics

    out = []
    for name in list_metrics():
        cls = get_metric(name)
        if cls.expensive:
            continue
        params = {}
        if "step" in cls.param_names():
            params["step"] = DEMO_ROWS_PER_STEP * input_size[1]
        out.append(cls.create(**params))
    return out


def demo_mprt() -> Any:
    """The MPRT the demo runs (on :data:`DEMO_MPRT_IMAGES` digits): its defaults, the
    block-level cascade (head, each block from the last, embeddings), Spearman similarity."""
    from .metrics import get_metric

    return get_metric("mprt").create(layers="blocks", similarity="spearman")


#: Rows (held-out digits) of the gallery, in ``xvit demo`` and in the README's picture.
GALLERY_ROWS = 4


def gallery_figure(
    model: Any, samples: list[Any], methods: list[Any], *, model_name: str = "the model"
) -> Any:
    """The gallery: ``samples`` (rows) x ``methods`` (columns), each row titled with its target
    class and probability, each cell with that image's Insertion and Deletion AUCs.

    ``xvit demo`` and ``scripts/make_gallery.py`` (the README's picture) both draw it here.
    Randomized methods run with seed 0; the AUCs use the demo's metric settings
    (:func:`demo_metrics`).

    Args:
        model: The model, as for :func:`xvit.explain`.
        samples: :class:`~xvit.data.Sample` objects (image, label as the target).
        methods: :class:`~xvit.Explainer` instances, one column each.
        model_name: How the title names the model (e.g. its spec, ``xvit:digits-vit``).

    Returns:
        The matplotlib Figure.
    """
    from .api import explain
    from .models import get_adapter
    from .viz import compare
    from .viz._metric_labels import better, curve_rank

    adapter = get_adapter(model)
    images = [s.image for s in samples]
    targets = [s.label for s in samples]
    scorers = [m for m in demo_metrics(adapter.preprocessing.size) if type(m).curve]
    scorers.sort(key=lambda m: curve_rank(type(m)))  # insertion, then deletion
    explanations, aucs = {}, {}
    for explainer in methods:
        if explainer.randomized:
            explainer = type(explainer).create(**{**explainer.params(), "seed": 0})
        e = explanations[explainer.name] = explain(explainer, model, images, target=targets)
        assert e.inputs is not None  # explain always keeps the preprocessed inputs
        aucs[e.method] = {m.name: m(model, e.inputs, e.targets, e) for m in scorers}
    fig = compare(images, explanations, aucs, preprocessing=adapter.preprocessing)
    scored = " and ".join(f"{m.name} ({better(type(m))} is better)" for m in scorers)
    fig.suptitle(
        f"{model_name} on held-out digits: target class, {scored} AUC per cell", fontsize=9
    )
    return fig


def gallery(
    model: Any,
    samples: list[Any],
    methods: list[Any],
    path: Path,
    *,
    model_name: str = "the model",
) -> Path:
    """Write :func:`gallery_figure` to ``path`` (PNG) and return the path."""
    import matplotlib.pyplot as plt

    fig = gallery_figure(model, samples, methods, model_name=model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def export_samples(samples: Sequence[Any], folder: Path) -> list[Path]:
    """Write ``samples`` as lossless PNGs named by position and label
    (``digit-0007-label3.png``) in ``folder``; return their paths.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from xvit.data import get_dataset
        >>> folder = Path(tempfile.mkdtemp())
        >>> paths = export_samples(get_dataset("digits", split="test", n=2), folder)
        >>> [p.name for p in paths]
        ['digit-0000-label9.png', 'digit-0001-label4.png']
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(samples):
        path = folder / f"digit-{i:04d}-label{sample.label}.png"
        sample.image.save(path)
        paths.append(path)
    return paths


@click.command("demo")
@model_option("Model to explain (the shipped digits ViT by default; xvit:digits-deit too).")
@images_option("Held-out images in the benchmark (or written by --export-samples).")
@out_option(
    "xvit-demo",
    "Folder for gallery.png, table.md, summary.csv/json, curves.png, times.png and mprt/.",
)
@device_option
@images_per_call_option(25)
@click.option(
    "--export-samples",
    "samples_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Only write the N held-out canvases as PNGs to this folder (digit-0007-label3.png: "
    "image 7, a 3), to try with xvit explain; the demo itself does not run.",
)
@handle_errors
def demo_command(
    model: str, n: int, out_dir: str, device: str, images_per_call: int, samples_dir: str | None
) -> None:
    """Run every method on the embedded model and data: the gallery (gallery.png), the
    benchmark (table.md, summary.csv, summary.json, curves.png, times.png, results.jsonl) and
    the MPRT sanity check on a few digits (mprt/table.md, mprt/mprt.png)."""
    from .bench.runner import run_benchmark
    from .data import get_dataset
    from .models import get_adapter, load_model

    t0 = time.perf_counter()
    data = get_dataset("digits", split="test", n=n)
    if samples_dir is not None:
        paths = export_samples(data, Path(samples_dir))
        click.echo(
            f"wrote {len(paths)} held-out canvases to {samples_dir}; try: xvit explain {paths[0]}"
        )
        return
    out = Path(out_dir)
    net = load_model(model, device=device)
    adapter = get_adapter(net)
    methods = demo_methods()
    rows = [data[i] for i in range(min(GALLERY_ROWS, len(data)))]
    path = gallery(net, rows, methods, out / "gallery.png", model_name=model)
    click.echo(f"gallery: {path}", err=True)
    results = run_benchmark(
        net,
        data,
        methods=methods,
        metrics=demo_metrics(adapter.preprocessing.size),
        n=n,
        images_per_call=images_per_call,
        out_dir=out,
        progress=True,  # a bar on a terminal, plain lines in a log; prints the table
    )
    for name, file in results.files.items():
        click.echo(f"{name}: {file}", err=True)
    if (out / "times.png").is_file():  # written beside the curves, not among results.files
        click.echo(f"times: {out / 'times.png'}", err=True)
    sanity = run_benchmark(
        net,
        data,
        methods=methods,
        metrics=[demo_mprt()],
        n=min(n, DEMO_MPRT_IMAGES),
        images_per_call=images_per_call,
        out_dir=out / "mprt",
        progress=True,
    )
    click.echo(f"mprt table: {sanity.files['table']}", err=True)
    if "mprt" in sanity.files:
        click.echo(f"mprt: {sanity.files['mprt']}", err=True)
    click.echo(f"done in {time.perf_counter() - t0:.0f} s", err=True)
