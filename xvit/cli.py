"""The ``xvit`` command line: ``xvit list``, ``xvit explain``, ``xvit bench``, ``xvit demo``.

Errors caused by the user (bad arguments, missing files, unsupported models) exit with status 2
and one line on stderr; a crash inside a method exits 1 with a short message (the full traceback
only with ``--debug``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ._cli_options import DEFAULT_MODEL, device_option, model_option, out_option, param_option
from ._cli_support import handle_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="xvit")
def main(debug: bool) -> None:
    """xvit: explain the decisions of Vision Transformers."""


#: What ``xvit list SECTION`` may name, and the section's title.
LIST_SECTIONS = {
    "methods": "methods",
    "metrics": "metrics",
    "datasets": "datasets",
    "aliases": "model aliases",
}


@main.command("list")
@click.argument("section", required=False, type=click.Choice(list(LIST_SECTIONS)))
@handle_errors
def list_cmd(section: str | None) -> None:
    """List explanation methods (with their papers), metrics (the expensive ones marked,
    with their cost), datasets and model aliases; SECTION lists only one of them."""
    from . import method_registry, model_aliases

    sections: list[tuple[str, list[tuple[str, str, str]]]] = [
        (
            "methods",
            [(name, _method_summary(cls), cls.paper) for name, cls in method_registry.items()],
        )
    ]
    for title, registry in _optional_registries():
        sections.append(
            (title, [(name, *_summary_and_paper(obj)) for name, obj in registry.items()])
        )
    aliases = []
    for name, spec in model_aliases.items():
        shown = spec if not Path(spec).is_absolute() else f"(shipped) {Path(spec).name}"
        aliases.append((name, shown, ""))
    sections.append(("model aliases", aliases))
    if section is not None:
        sections = [s for s in sections if s[0] == LIST_SECTIONS[section]]
    for title, rows in sections:
        click.echo(f"{title}:")
        width = max((len(name) for name, _, _ in rows), default=0)
        for name, summary, paper in rows:
            click.echo(f"  {name:<{width}}  {plain_text(summary)}".rstrip())
            if paper:
                click.echo(f"  {'':<{width}}    paper: {plain_text(paper)}")


def _method_summary(cls: Any) -> str:
    """A method's summary, and why it cannot run here when its extras are missing."""
    reason = cls.unavailable_reason()
    return f"{cls.summary} [unavailable: {reason}]" if reason else str(cls.summary)


def _summary_and_paper(obj: Any) -> tuple[str, str]:
    """A registry entry's one-line summary (else its docstring's first line) and paper; an
    expensive metric's summary ends with its cost and when it runs."""
    lines = (obj.__doc__ or "").strip().splitlines()
    summary = str(getattr(obj, "summary", "") or (lines[0] if lines else ""))
    if getattr(obj, "expensive", False) is True:
        cost = str(getattr(obj, "cost", "") or "").strip()
        summary = summary.rstrip(".") + ". Expensive, runs only when named or with --metrics all"
        summary += f": {cost}" if cost else "."
    return summary, str(getattr(obj, "paper", "") or "")


#: RST roles (``:class:`~xvit.Explanation```), RST literals (````x````) and Markdown code
#: (```x```), whose text is kept without the markup.
_MARKUP = re.compile(r":[\w:]+:`(?P<role>[^`]+)`|``(?P<literal>[^`]+)``|`(?P<code>[^`]+)`")


def plain_text(text: str) -> str:
    """``text`` without RST roles and RST or Markdown backticks, on one line (a role's
    ``~target`` shows its last part, as Sphinx renders it).

    Example:
        >>> plain_text("images in ``ImageNet(split='val')`` order, see :class:`~xvit.Sample`")
        "images in ImageNet(split='val') order, see Sample"
    """

    def unmarked(m: re.Match[str]) -> str:
        role = m.group("role")
        if role is None:
            return m.group("literal") or m.group("code")
        return role[1:].rsplit(".", 1)[-1] if role.startswith("~") else role

    return " ".join(_MARKUP.sub(unmarked, text).split())


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


def shipped_model_note() -> str:
    """What the shipped digit models were trained on, for ``xvit explain --help``."""
    from .data.digits import TRAINED_ON

    return (
        f"The default model, {DEFAULT_MODEL} (and xvit:digits-deit), was trained only on "
        f"{TRAINED_ON}. Other digit images, such as a dark digit on a light background or a "
        f"digit that fills the image, are often misread; 'xvit demo --export-samples DIR' "
        f"writes held-out canvases to try."
    )


@main.command("explain", epilog=shipped_model_note())
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
@model_option()
@click.option(
    "--target",
    default=None,
    metavar="INDEX|NAME",
    help="Class to explain, by index or by the model's class name, e.g. 'tabby cat' "
    "(default: the predicted class).",
)
@device_option
@out_option("xvit-out", "Folder for the overlay PNGs.")
@param_option("method", "METHOD", "-p rise.num_masks=500 or -p batch_size=16")
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
    target: str | None,
    device: str,
    out_dir: str,
    params: tuple[str, ...],
    grid: bool,
    progress: bool | None,
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
    from ._devices import check_device
    from ._errors import InvalidInputError
    from .methods import method_registry
    from .metrics import metrics
    from .viz import compare, save_overlays

    for image in images:
        if not Path(image).exists():
            raise InvalidInputError(f"image file not found: {image}; check the path")
    no_metrics = "xvit explain computes no metrics; set metric parameters in xvit bench"
    (explainers,) = build(
        [Selection(method_registry, method, "--methods")], params, [(metrics, no_metrics)]
    )
    check_device(device)
    net = load_model(model, device=device)
    adapter = get_adapter(net)
    grid_path = Path(out_dir) / "comparison.png"
    results = {}
    for explainer in explainers:
        name = explainer.name
        result = explain(explainer, net, list(images), target=_target(target), progress=progress)
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


def _target(text: str | None) -> int | str | None:
    """``--target``: an integer is a class index, anything else a class name."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


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
