"""The ``xvit`` command line: ``xvit list``, ``xvit explain``, ``xvit bench``, ``xvit demo``.

Errors caused by the user (bad arguments, missing files, unsupported models) exit with status 2
and one line on stderr; a crash inside a method exits 1 with a short message (the full traceback
only with ``--debug``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._cli_support import DEFAULT_MODEL, handle_errors, param_help


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="xvit")
def main(debug: bool) -> None:
    """xvit: explain the decisions of Vision Transformers."""


@main.command("list")
@handle_errors
def list_cmd() -> None:
    """List explanation methods (with their papers), metrics, datasets and model aliases."""
    from . import methods, model_aliases

    click.echo("methods:")
    for name, cls in methods.items():
        click.echo(f"  {name:<12} {cls.summary}")
        if cls.paper:
            click.echo(f"  {'':<12}   paper: {cls.paper}")
    for title, registry in _optional_registries():
        click.echo(f"{title}:")
        for name, obj in registry.items():
            doc = getattr(obj, "summary", "") or (obj.__doc__ or "").strip().splitlines()[0:1]
            line = doc if isinstance(doc, str) else (doc[0] if doc else "")
            click.echo(f"  {name:<12} {line}")
    click.echo("model aliases:")
    for name, spec in model_aliases.items():
        shown = spec if not Path(spec).is_absolute() else f"(shipped) {Path(spec).name}"
        click.echo(f"  {name:<18} {shown}")


def _optional_registries() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    try:
        from .metrics import metrics

        out.append(("metrics", metrics))
    except ImportError:
        pass
    try:
        from .data import datasets

        out.append(("datasets", datasets))
    except ImportError:
        pass
    return out


@main.command("explain")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--method",
    "--methods",
    "-m",
    "method",
    default="gradmask",
    show_default=True,
    help="Method name(s), comma-separated, or 'all'; several write one comparison grid.",
)
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="timm:<name>, hf:<repo id>, an alias (vit, deit, xvit:digits-vit), or a path.",
)
@click.option("--target", type=int, default=None, help="Class to explain (default: predicted).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:0, ...")
@click.option(
    "--out",
    "out_dir",
    default="xvit-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the overlay PNGs.",
)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="[METHOD.]KEY=VALUE",
    help="A method parameter, e.g. -p rise.num_masks=500 or -p batch_size=16. "
    + param_help("method", "METHOD"),
)
@click.option("--grid", is_flag=True, help="Show the native patch grid instead of smoothing.")
@handle_errors
def explain_cmd(
    images: tuple[str, ...],
    method: str,
    model: str,
    target: int | None,
    device: str,
    out_dir: str,
    params: tuple[str, ...],
    grid: bool,
) -> None:
    """Explain IMAGES: one overlay PNG per image for one method, OUT/<image>_<method>.png;
    for several methods one comparison grid, OUT/comparison.png (rows: images, labelled with
    their file names; columns: methods).

    Every method and parameter is checked before the model loads. Overlays are named after
    the image file; images that share a name are named by their path below the folder they
    share (d1/x.png, d2/x.png -> d1_x_gradmask.png, d2_x_gradmask.png), and a name still
    taken gets -2, -3, ... in the order given.
    """
    from . import explain, get_adapter, load_model
    from ._cli_support import Selection, build
    from ._errors import InvalidInputError
    from .methods import methods
    from .metrics import metrics
    from .viz import compare, save_overlays

    for image in images:
        if not Path(image).exists():
            raise InvalidInputError(f"image file not found: {image}; check the path")
    no_metrics = "xvit explain computes no metrics; set metric parameters in xvit bench"
    (explainers,) = build(
        [Selection(methods, method, "--methods")], params, [(metrics, no_metrics)]
    )
    net = load_model(model, device=_check_device(device))
    adapter = get_adapter(net)
    grid_path = Path(out_dir) / "comparison.png"
    results = {}
    for explainer in explainers:
        name = explainer.name
        result = explain(explainer, net, list(images), target=target)
        results[name] = result
        if len(explainers) == 1:
            paths = save_overlays(
                result, out_dir, list(images), preprocessing=adapter.preprocessing, grid=grid
            )
        else:
            paths = [grid_path] * len(images)
        for image, t, cls, p, path in zip(
            images,
            result.targets.tolist(),
            result.class_names,
            result.probabilities.tolist(),
            paths,
        ):
            click.echo(f"{image}: class {t} ({cls}) p={p:.3f} [{name}] -> {path}")
    if len(explainers) > 1:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        fig = compare(
            None,
            results,
            preprocessing=adapter.preprocessing,
            grid=grid,
            row_labels=_row_labels(images),
        )
        fig.savefig(grid_path, dpi=120)
        click.echo(
            f"comparison grid ({len(images)} images x {len(explainers)} methods): {grid_path}"
        )


def _row_labels(images: tuple[str, ...]) -> list[str]:
    """Each image's file name; the path as given where two images share a file name."""
    names = [Path(image).name for image in images]
    return [name if names.count(name) == 1 else image for name, image in zip(names, images)]


def _check_device(device: str) -> str:
    import torch

    from ._errors import InvalidInputError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} requested but CUDA is not available; use cpu")
    return device


def _add_optional_commands() -> None:
    try:
        from .bench.cli import bench_command
    except ImportError:
        return
    main.add_command(bench_command, "bench")
    from .demo import demo_command

    main.add_command(demo_command, "demo")


_add_optional_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
