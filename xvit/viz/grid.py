"""A comparison grid: the explanations of several methods side by side, one row per image,
with scores under each cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._errors import InvalidInputError, ParameterError
from ..explanation import Explanation
from ._compositing import DEFAULT_CMAP, check_alpha, composite, get_colormap
from ._figures import add_colorbar, new_figure, probability_text, show, target_text
from ._metric_labels import short_name
from ._pictures import check_explanation, check_preprocessing, pictures_for

__all__ = ["compare"]


def compare(
    images: Any,
    explanations: Mapping[str, Explanation],
    aucs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    preprocessing: Any | None = None,
    grid: bool = False,
    alpha: float = 0.5,
    cmap: Any = DEFAULT_CMAP,
    colorbar: bool = True,
    cell_inches: float = 1.6,
    row_labels: Sequence[str] | None = None,
) -> Any:
    """A grid of explanations: one row per image, the input then one column per method.

    Args:
        images: The images, as for :func:`overlay` (None: those the first explanation holds).
        explanations: Column title -> the :class:`~xvit.Explanation` of the same images
            (usually method name -> result).
        aucs: Optional scores to print under each cell's title: column title -> metric name ->
            one value per image (a sequence, a tensor, or a
            :class:`~xvit.metrics.MetricResult`), e.g. ``{"gradmask": {"insertion": r}}``.
        preprocessing: The model's preprocessing, as for :func:`overlay`.
        grid: Show native patch grids instead of bilinear smoothing.
        alpha: Opacity of the heatmaps.
        cmap: A matplotlib colormap or its name.
        colorbar: Add one colorbar for the whole grid.
        cell_inches: Side of one cell in inches.
        row_labels: One label per image (its file name, say), written left of its row; a
            label longer than a cell is shortened in the middle.

    Returns:
        The matplotlib Figure. The input column's titles give the target and its probability
        (from the first explanation); a cell names its target too when the columns explain
        different targets for one image.

    Example:
        >>> import torch, xvit
        >>> from xvit.viz import compare
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> x = torch.randn(2, 3, 64, 64)
        >>> results = {m: xvit.explain(m, model, x, target=[3, 5]) for m in ("attention", "gae")}
        >>> fig = compare(x, results, aucs={"gae": {"insertion": [0.81, 0.52]}},
        ...               preprocessing=xvit.get_adapter(model).preprocessing)
        >>> [ax.get_title() for ax in fig.axes[:3]]
        ['input\\nclass 3, p=...', 'attention', 'gae\\nins 0.81']
        >>> fig = compare(x, results, row_labels=["a.png", "b.png"])
        >>> [ax.get_ylabel() for ax in fig.axes[:6:3]]
        ['a.png', 'b.png']
    """
    if not isinstance(explanations, Mapping) or not explanations:
        raise InvalidInputError(
            "explanations must be a non-empty mapping of column title -> Explanation, e.g. "
            "{'gradmask': xvit.explain('gradmask', model, x)}"
        )
    columns = list(explanations)
    for name in columns:
        check_explanation(explanations[name])
    first = explanations[columns[0]]
    n = len(first)
    for name in columns:
        if len(explanations[name]) != n:
            raise InvalidInputError(
                f"{name!r} explains {len(explanations[name])} images but {columns[0]!r} "
                f"explains {n}; compare explanations of the same images"
            )
    scores = _check_aucs(aucs, columns, n)
    labels = _check_row_labels(row_labels, n)
    preprocessing = check_preprocessing(preprocessing)
    alpha = check_alpha(alpha)
    colormap = get_colormap(cmap)
    pictures = {name: pictures_for(images, explanations[name], preprocessing) for name in columns}
    base = pictures[columns[0]]

    ncol = len(columns) + 1
    title_lines = 2 if scores else 1
    fig = new_figure(
        cell_inches * ncol + (0.7 if colorbar else 0.0),
        n * (cell_inches + 0.16 * title_lines + 0.12) + 0.3,
        layout="constrained",
    )
    axes = fig.subplots(n, ncol, squeeze=False)
    for i in range(n):
        head = "input\n" if i == 0 else ""
        show(
            axes[i, 0],
            base[i].pixels,
            f"{head}{target_text(first, i)}, {probability_text(first, i)}",
            fontsize=8,
        )
        if labels:
            axes[i, 0].set_ylabel(_shortened(labels[i], int(cell_inches * 12)), fontsize=8)
        targets = {int(explanations[c].targets[i]) for c in columns}
        for j, name in enumerate(columns, start=1):
            e = explanations[name]
            lines = [name]
            if len(targets) > 1:
                lines[0] += f" ({target_text(e, i)})"
            if name in scores:
                lines.append(
                    "  ".join(
                        f"{short_name(m)} {values[i]:.2f}" for m, values in scores[name].items()
                    )
                )
            pixels = composite(pictures[name][i], e, i, grid, alpha, colormap)
            show(axes[i, j], pixels, "\n".join(lines), fontsize=8)
    if colorbar:
        add_colorbar(fig, axes, colormap, shrink=min(0.9, 0.35 + 0.15 * n), aspect=25, pad=0.01)
    return fig


def _check_row_labels(row_labels: Sequence[str] | None, n: int) -> list[str]:
    if row_labels is None:
        return []
    if isinstance(row_labels, str) or not isinstance(row_labels, Sequence):
        raise ParameterError(
            f"row_labels must be a sequence of strings, one per image, got {row_labels!r}"
        )
    if len(row_labels) != n:
        raise ParameterError(
            f"got {len(row_labels)} row labels for {n} images; give one label per image"
        )
    return [str(label) for label in row_labels]


def _shortened(text: str, limit: int) -> str:
    """``text``, or its start and end around an ellipsis when longer than ``limit``."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def _check_aucs(
    aucs: Mapping[str, Mapping[str, Any]] | None, columns: Sequence[str], n: int
) -> dict[str, dict[str, list[float]]]:
    if aucs is None:
        return {}
    if not isinstance(aucs, Mapping):
        raise ParameterError(
            "aucs must map a column title to {metric name: one value per image}, e.g. "
            "{'gradmask': {'insertion': [0.8, 0.6]}}"
        )
    out: dict[str, dict[str, list[float]]] = {}
    for name, per_metric in aucs.items():
        if name not in columns:
            raise ParameterError(
                f"aucs has scores for {name!r}, which is not a column; columns: "
                f"{', '.join(columns)}"
            )
        if not isinstance(per_metric, Mapping):
            raise ParameterError(
                f"aucs[{name!r}] must map metric names to per-image values, got "
                f"{type(per_metric).__name__}"
            )
        out[name] = {}
        for metric, values in per_metric.items():
            values = getattr(values, "scores", values)
            if isinstance(values, torch.Tensor):
                values = values.detach().cpu().reshape(-1).tolist()
            try:
                floats = [float(v) for v in values]
            except (TypeError, ValueError):
                raise ParameterError(
                    f"aucs[{name!r}][{metric!r}] must be one number per image, got {values!r}"
                ) from None
            if len(floats) != n:
                raise ParameterError(
                    f"aucs[{name!r}][{metric!r}] has {len(floats)} values for {n} images; give "
                    f"one per image"
                )
            out[name][str(metric)] = floats
    return out
