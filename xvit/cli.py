"""The ``xvit`` command line: ``xvit list``, ``xvit explain``, ``xvit bench``, ``xvit demo``.

Errors caused by the user (bad arguments, missing files, unsupported models) exit with status 2
and one line on stderr; a crash inside a method exits 1 with a short message (the full traceback
only with ``--debug``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._cli_support import DEFAULT_MODEL, handle_errors, parse_value


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are Python literals when they parse, else strings."""
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        key, raw = item.split("=", 1)
        params[key.strip().replace("-", "_")] = parse_value(raw)
    return params


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
    metavar="KEY=VALUE",
    help="Method parameter, e.g. -p masks_per_layer=8; with several methods, "
    "-p rise.num_masks=500 sets it for one method only (repeatable).",
)
@click.option("--grid", is_flag=True, help="Show the native patch grid instead of smoothing.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress per image on stderr (default: only for a run estimated to take long, "
    "after a line with the estimate).",
)
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
    progress: bool | None,
) -> None:
    """Explain IMAGES: one overlay PNG per image for one method; for several methods one
    comparison grid, OUT/comparison.png (rows: images, columns: methods)."""
    from . import explain, get_adapter, list_methods, load_model
    from ._errors import InvalidInputError
    from .viz import compare, save_overlays

    for image in images:
        if not Path(image).exists():
            raise InvalidInputError(f"image file not found: {image}; check the path")
    names = list_methods() if method == "all" else [m.strip() for m in method.split(",") if m]
    kwargs = parse_params(params)
    net = load_model(model, device=_check_device(device))
    adapter = get_adapter(net)
    grid_path = Path(out_dir) / "comparison.png"
    results = {}
    unknown = sorted({k.split(".", 1)[0] for k in kwargs if "." in k} - set(names))
    if unknown:
        raise InvalidInputError(
            f"-p names method(s) {', '.join(unknown)} that are not being run; run them with "
            f"--methods, or drop the METHOD. prefix"
        )
    for name in names:
        own = {k: v for k, v in kwargs.items() if "." not in k}
        own.update({k.split(".", 1)[1]: v for k, v in kwargs.items() if k.startswith(f"{name}.")})
        result = explain(name, net, list(images), target=target, progress=progress, **own)
        results[name] = result
        if len(names) == 1:
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
    if len(names) > 1:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        fig = compare(None, results, preprocessing=adapter.preprocessing, grid=grid)
        fig.savefig(grid_path, dpi=120)
        click.echo(f"comparison grid ({len(images)} images x {len(names)} methods): {grid_path}")


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
