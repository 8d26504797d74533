"""Pictures of explanations: overlays, comparison grids, benchmark curves and timings.

Every figure is a :class:`matplotlib.figure.Figure` on the Agg canvas, built without pyplot:
nothing here switches matplotlib's global backend, opens a window or calls ``plt.show``.
Save a figure with ``fig.savefig("out.png")``; in Jupyter, a figure returned by the last
line of a cell is displayed.

Maps are drawn on the images they explain: on the model's input (a preprocessed tensor,
shown de-normalised) or on the original images (paths, PIL images, arrays), where the map is
put back where the model looked, through the model's own resize and centre crop. Each map is
min-max scaled to [0, 1] on its own, smoothed bilinearly for display or shown on its native
patch grid (``grid=True``), in a perceptually uniform colormap (``inferno`` by default).

Example:
    >>> import torch, xvit
    >>> from xvit.viz import compare, overlay
    >>> model = xvit.load_model("xvit:digits-vit")
    >>> x = torch.randn(2, 3, 64, 64)
    >>> e = xvit.explain("attention", model, x)
    >>> fig = overlay(x, e, preprocessing=xvit.get_adapter(model).preprocessing)
    >>> len(fig.axes)  # one panel per image
    2
    >>> grid = compare(x, {"attention": e, "gradcam": xvit.explain("gradcam", model, x)})
    >>> len(grid.axes)  # 2 rows x (input + 2 methods), and the colorbar
    7
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from ._errors import InvalidInputError, ParameterError
from .explanation import Explanation

#: The default colormap: perceptually uniform, readable in greyscale and by colour-blind readers.
DEFAULT_CMAP = "inferno"
#: Original images larger than this (longest side, pixels) are downscaled for display only.
MAX_DISPLAY_SIDE = 1024
#: Short names of metrics in cell titles.
METRIC_ABBREVIATIONS = {"insertion": "ins", "deletion": "del", "pointing_game": "pg"}

__all__ = [
    "DEFAULT_CMAP",
    "compare",
    "display_images",
    "heatmap",
    "overlay",
    "overlay_array",
    "plot_curves",
    "plot_times",
    "save_overlays",
]


# --- images and maps -----------------------------------------------------------------------
@dataclass
class _Picture:
    """An image to draw on, and where the model input lies in it.

    ``layout`` is (sx, sy, left, top): the image's pixel coordinate x (continuous, from its
    left edge) lies at input coordinate ``x * sx - left``, and likewise y with sy and top.
    """

    pixels: np.ndarray
    layout: tuple[float, float, float, float]


_IDENTITY = (1.0, 1.0, 0.0, 0.0)


def _figure(width: float, height: float, **kwargs: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _colormap(cmap: Any) -> Any:
    from matplotlib import colormaps
    from matplotlib.colors import Colormap

    if isinstance(cmap, Colormap):
        return cmap
    if isinstance(cmap, str) and cmap in colormaps:
        return colormaps[cmap]
    raise ParameterError(
        f"unknown colormap {cmap!r}; use a matplotlib colormap name, preferably a perceptually "
        f"uniform one: 'inferno', 'magma', 'viridis', 'plasma' or 'cividis'"
    )


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ParameterError(f"alpha (the heatmap's opacity) must be in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_explanation(explanation: Any) -> Explanation:
    if not isinstance(explanation, Explanation):
        raise InvalidInputError(
            f"expected an xvit.Explanation (what xvit.explain returns), got "
            f"{type(explanation).__name__}"
        )
    return explanation


def _check_preprocessing(preprocessing: Any) -> Any:
    if preprocessing is not None and not (
        hasattr(preprocessing, "denormalize") and hasattr(preprocessing, "resize_layout")
    ):
        raise ParameterError(
            f"preprocessing must be an xvit.Preprocessing (xvit.get_adapter(model)."
            f"preprocessing), got {type(preprocessing).__name__}"
        )
    return preprocessing


def _check_index(index: Any, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise ParameterError(f"index must be an image index in 0 .. {n - 1}, got {index!r}")
    return int(index) % n


def _input_view(x: torch.Tensor, preprocessing: Any | None) -> np.ndarray:
    """A C x H x W model input as H x W x 3 pixels in [0, 1]."""
    x = x.detach().float().cpu()
    if preprocessing is not None:
        x = preprocessing.denormalize(x)
    else:  # unknown normalisation: stretch the image's own range
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    arr = x.clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3], dtype=np.float32)


def _original(item: Any, input_size: tuple[int, int], preprocessing: Any | None) -> _Picture:
    """An original image (path, PIL, array), and where the model's input lies in it."""
    from PIL import Image

    from ._inputs import as_image

    img = as_image(item)
    w, h = img.size
    big = max(w, h)
    if preprocessing is None:
        if (h, w) != tuple(input_size):
            raise InvalidInputError(
                f"an image is {w}x{h} (width x height) but the model's input was "
                f"{input_size[1]}x{input_size[0]}: pass preprocessing="
                f"xvit.get_adapter(model).preprocessing, so that the map is placed where the "
                f"model looked, or pass the preprocessed input tensor instead"
            )
        sx, sy, left, top = _IDENTITY
    else:
        if tuple(preprocessing.size) != tuple(input_size):
            raise ParameterError(
                f"the preprocessing makes {preprocessing.size[0]}x{preprocessing.size[1]} inputs "
                f"but the explanation's input was {input_size[0]}x{input_size[1]}; pass the "
                f"preprocessing of the model that was explained"
            )
        nw, nh, crop_left, crop_top = preprocessing.resize_layout((w, h))
        sx, sy, left, top = nw / w, nh / h, float(crop_left), float(crop_top)
    if big > MAX_DISPLAY_SIDE:
        f = MAX_DISPLAY_SIDE / big
        size = (max(1, round(w * f)), max(1, round(h * f)))
        sx, sy = sx * w / size[0], sy * h / size[1]
        img = img.resize(size, resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    return _Picture(pixels, (sx, sy, left, top))


def _pictures(images: Any, explanation: Explanation, preprocessing: Any | None) -> list[_Picture]:
    """One picture per map of ``explanation``, from ``images`` or what the explanation holds."""
    n = len(explanation)
    size = explanation.input_size
    if images is None:
        originals = explanation.images
        usable = originals is not None and (
            preprocessing is not None
            or all(tuple(getattr(im, "size", ())) == (size[1], size[0]) for im in originals)
        )
        if usable and originals is not None:
            images = list(originals)
        elif explanation.inputs is not None:
            images = explanation.inputs
        elif originals is not None:
            images = list(originals)  # raises below with the advice to pass preprocessing
        else:
            raise InvalidInputError(
                "the explanation carries no images: pass them (the input tensor, or the "
                "original images) as the first argument"
            )
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise InvalidInputError(
                f"an image tensor must be a preprocessed C x H x W image or B x C x H x W batch, "
                f"got shape {tuple(images.shape)}"
            )
        items: list[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if len(items) != n:
        raise InvalidInputError(
            f"got {len(items)} images for {n} maps: pass one image per explained image, in the "
            f"same order"
        )
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.dim() != 3 or tuple(item.shape[-2:]) != tuple(size):
                raise InvalidInputError(
                    f"an image tensor is taken as the model's input and must be C x "
                    f"{size[0]} x {size[1]} like the explained input, got shape "
                    f"{tuple(item.shape)}; pass original images as PIL images, arrays or paths"
                )
            out.append(_Picture(_input_view(item, preprocessing), _IDENTITY))
        else:
            out.append(_original(item, size, preprocessing))
    return out


def _bilinear_taps(coord: np.ndarray, n_in: float, n_map: int) -> tuple[Any, Any, Any]:
    """Indices and weights of linear interpolation with half-pixel centres, clamped at the
    edges (as ``torch.nn.functional.interpolate(..., align_corners=False)``)."""
    p = np.maximum(coord * n_map / n_in - 0.5, 0.0)
    i0 = np.minimum(np.floor(p).astype(np.int64), n_map - 1)
    i1 = np.minimum(i0 + 1, n_map - 1)
    return i0, i1, (p - i0).astype(np.float32)


def _map_on(
    picture: _Picture, native: np.ndarray, input_size: tuple[int, int], grid: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The map resampled onto the picture's pixels, and which pixels the model saw."""
    oh, ow = picture.pixels.shape[:2]
    sx, sy, left, top = picture.layout
    in_h, in_w = input_size
    h, w = native.shape
    u = (np.arange(ow) + 0.5) * sx - left  # input coordinates of the pixel centres
    v = (np.arange(oh) + 0.5) * sy - top
    covered = ((v >= 0) & (v < in_h))[:, None] & ((u >= 0) & (u < in_w))[None, :]
    if grid:
        cols = np.clip(np.floor(u * w / in_w).astype(np.int64), 0, w - 1)
        rows = np.clip(np.floor(v * h / in_h).astype(np.int64), 0, h - 1)
        return native[np.ix_(rows, cols)], covered
    x0, x1, tx = _bilinear_taps(u, in_w, w)
    y0, y1, ty = _bilinear_taps(v, in_h, h)
    upper = native[y0][:, x0] * (1 - tx) + native[y0][:, x1] * tx
    lower = native[y1][:, x0] * (1 - tx) + native[y1][:, x1] * tx
    return upper * (1 - ty)[:, None] + lower * ty[:, None], covered


def _composite(
    picture: _Picture,
    explanation: Explanation,
    index: int,
    grid: bool,
    alpha: float,
    cmap: Any,
) -> np.ndarray:
    native = explanation.normalized()[index].detach().float().cpu().numpy()
    values, covered = _map_on(picture, native, explanation.input_size, grid)
    colours = cmap(np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32)
    weight = alpha * covered[..., None].astype(np.float32)
    return (1 - weight) * picture.pixels + weight * colours


def _label(explanation: Explanation, index: int) -> str:
    target = int(explanation.targets[index])
    name = explanation.class_names[index] if explanation.class_names else str(target)
    return f"class {target}" if name == str(target) else f"{name} ({target})"


def _probability(explanation: Explanation, index: int) -> str:
    return f"p={float(explanation.probabilities[index]):.2f}"


def _colorbar(fig: Any, axes: Any, cmap: Any, **kwargs: Any) -> Any:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=axes, **kwargs)
    bar.set_label("saliency (each map scaled to 0-1)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def _show(ax: Any, pixels: np.ndarray, title: str | None, fontsize: float = 9) -> None:
    ax.imshow(np.clip(pixels, 0.0, 1.0))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=fontsize)


# --- public: maps and overlays -------------------------------------------------------------
def heatmap(explanation: Explanation, index: int = 0, *, grid: bool = False) -> np.ndarray:
    """One map at the model's input resolution, min-max scaled to [0, 1] (before resampling).

    Args:
        explanation: What :func:`xvit.explain` returned.
        index: Which image of the batch.
        grid: Keep the native patch grid (nearest) instead of smoothing (bilinear).

    Returns:
        An H x W float array.

    Example:
        >>> import torch
        >>> from xvit import Explanation
        >>> e = Explanation(torch.tensor([[[0.0, 2.0]]]), "demo", torch.tensor([0]),
        ...                 torch.tensor([1.0]), {}, (1, 4))
        >>> heatmap(e, grid=True).tolist()
        [[0.0, 0.0, 1.0, 1.0]]
    """
    _check_explanation(explanation)
    index = _check_index(index, len(explanation))
    native = explanation.normalized()[index].detach().float().cpu().numpy()
    canvas = _Picture(np.zeros((*explanation.input_size, 0), np.float32), _IDENTITY)
    return _map_on(canvas, native, explanation.input_size, grid)[0]


def display_images(explanation: Explanation, preprocessing: Any | None = None) -> list[np.ndarray]:
    """The images behind an explanation as the model saw them, H x W x 3 in [0, 1].

    The explained input, de-normalised with ``preprocessing`` (or stretched to [0, 1] when
    it is not given); without a stored input, the original images resized to the input size.

    Example:
        >>> import torch
        >>> from xvit import Explanation
        >>> e = Explanation(torch.ones(1, 2, 2), "demo", torch.tensor([0]), torch.tensor([1.0]),
        ...                 {}, (8, 8), inputs=torch.randn(1, 3, 8, 8))
        >>> display_images(e)[0].shape
        (8, 8, 3)
    """
    _check_explanation(explanation)
    preprocessing = _check_preprocessing(preprocessing)
    height, width = explanation.input_size
    if explanation.inputs is not None:
        return [_input_view(x, preprocessing) for x in explanation.inputs]
    if explanation.images is not None:
        from PIL import Image

        from ._inputs import as_image

        return [
            np.asarray(
                as_image(im).resize((width, height), resample=Image.Resampling.BILINEAR),
                dtype=np.float32,
            )
            / 255.0
            for im in explanation.images
        ]
    raise InvalidInputError("the explanation carries no images; pass them to overlay() explicitly")


def overlay_array(
    image: Any,
    explanation: Explanation,
    index: int = 0,
    *,
    preprocessing: Any | None = None,
    grid: bool = False,
    alpha: float = 0.5,
    cmap: Any = DEFAULT_CMAP,
) -> np.ndarray:
    """The map of one image blended over it, as an RGB array (no figure).

    Each pixel is ``(1 - alpha) * image + alpha * cmap(saliency)`` where the model saw it,
    and the image unchanged elsewhere (outside the centre crop of an original image).

    Args:
        image: The image: the model input (a C x H x W tensor, as passed to
            :func:`xvit.explain`), an original image (path, PIL image, uint8 array), or None
            for the one the explanation holds.
        explanation: What :func:`xvit.explain` returned.
        index: Which image of the explanation's batch.
        preprocessing: The model's preprocessing (``xvit.get_adapter(model).preprocessing``):
            de-normalises input tensors, and places the map on original images of another size
            than the input.
        grid: Show the native patch grid instead of a bilinear smoothing.
        alpha: Opacity of the heatmap, 0 to 1.
        cmap: A matplotlib colormap or its name.

    Returns:
        An H x W x 3 float32 array in [0, 1] at the image's own resolution (originals larger
        than :data:`MAX_DISPLAY_SIDE` are downscaled).

    Example:
        >>> import torch
        >>> from xvit import Explanation
        >>> e = Explanation(torch.tensor([[[0.0, 1.0]]]), "demo", torch.tensor([0]),
        ...                 torch.tensor([1.0]), {}, (1, 2))
        >>> out = overlay_array(torch.zeros(3, 1, 2), e, grid=True, alpha=1.0, cmap="gray")
        >>> out[0, :, 0].tolist()  # black where the map is 0, white where it is 1
        [0.0, 1.0]
    """
    _check_explanation(explanation)
    index = _check_index(index, len(explanation))
    alpha = _check_alpha(alpha)
    colormap = _colormap(cmap)
    preprocessing = _check_preprocessing(preprocessing)
    if image is None:
        picture = _pictures(None, explanation, preprocessing)[index]
    else:
        batch = isinstance(image, (list, tuple)) or (
            isinstance(image, torch.Tensor) and image.dim() == 4
        )
        if batch and len(image) == len(explanation):
            image = image[index]  # the batch the explanation was made from
        single = _select(explanation, index)
        picture = _pictures(image, single, preprocessing)[0]
        explanation, index = single, 0
    return _composite(picture, explanation, index, grid, alpha, colormap)


def _select(explanation: Explanation, index: int) -> Explanation:
    """The explanation of one image of a batch."""
    sl = slice(index, index + 1)
    return Explanation(
        map=explanation.map[sl],
        method=explanation.method,
        targets=explanation.targets[sl],
        probabilities=explanation.probabilities[sl],
        params=explanation.params,
        input_size=explanation.input_size,
        inputs=None if explanation.inputs is None else explanation.inputs[sl],
        images=None if explanation.images is None else explanation.images[sl],
        class_names=explanation.class_names[sl],
    )


def overlay(
    images: Any,
    explanation: Explanation,
    *,
    index: int | None = None,
    preprocessing: Any | None = None,
    grid: bool = False,
    alpha: float = 0.5,
    cmap: Any = DEFAULT_CMAP,
    colorbar: bool = False,
    title: bool = True,
    ax: Any = None,
    ncols: int = 4,
) -> Any:
    """Heatmaps drawn over the images they explain: one panel per image.

    Args:
        images: The model input (the B x C x H x W tensor given to :func:`xvit.explain`,
            shown de-normalised), the original images (paths, PIL images, uint8 arrays; one
            per map), or None for what the explanation holds (the originals when it has them
            and they can be placed, else its input).
        explanation: What :func:`xvit.explain` returned.
        index: Draw only this image of the batch (default: all).
        preprocessing: The model's preprocessing (``xvit.get_adapter(model).preprocessing``):
            de-normalises input tensors and maps the heatmap onto original images through the
            model's resize and centre crop. Needed for originals of another size than the
            input.
        grid: Show the native patch grid instead of a bilinear smoothing.
        alpha: Opacity of the heatmap, 0 to 1.
        cmap: A matplotlib colormap or its name (perceptually uniform ones read best).
        colorbar: Add a colorbar.
        title: Title each panel with the method, the target and its probability.
        ax: Draw one image (``index``, or a batch of one) on these matplotlib axes instead of
            a new figure.
        ncols: Panels per row of a new figure.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).

    Example:
        >>> import torch, xvit
        >>> from xvit.viz import overlay
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> x = torch.randn(3, 3, 64, 64)
        >>> e = xvit.explain("gradcam", model, x)
        >>> fig = overlay(x, e, preprocessing=xvit.get_adapter(model).preprocessing,
        ...               grid=True, colorbar=True)
        >>> fig.savefig("overlay.png")
        >>> len(fig.axes)  # three panels and the colorbar
        4
    """
    _check_explanation(explanation)
    alpha = _check_alpha(alpha)
    colormap = _colormap(cmap)
    preprocessing = _check_preprocessing(preprocessing)
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ParameterError(f"ncols must be a positive integer, got {ncols!r}")
    pictures = _pictures(images, explanation, preprocessing)
    chosen = (
        list(range(len(explanation))) if index is None else [_check_index(index, len(pictures))]
    )
    if ax is not None and len(chosen) != 1:
        raise ParameterError(
            f"ax= draws one image, but the explanation holds {len(chosen)}; pass index= too"
        )
    if ax is not None:
        fig, axes = ax.figure, [ax]
    else:
        cols = min(ncols, len(chosen))
        rows = math.ceil(len(chosen) / cols)
        fig = _figure(2.6 * cols + (0.7 if colorbar else 0.0), 2.8 * rows, layout="constrained")
        grid_axes = fig.subplots(rows, cols, squeeze=False)
        axes = list(grid_axes.flat)
        for extra in axes[len(chosen) :]:
            extra.set_axis_off()
        axes = axes[: len(chosen)]
    for a, i in zip(axes, chosen):
        text = None
        if title:
            text = f"{explanation.method}: {_label(explanation, i)}, {_probability(explanation, i)}"
        _show(a, _composite(pictures[i], explanation, i, grid, alpha, colormap), text)
    if colorbar:
        _colorbar(fig, axes, colormap, shrink=0.9)
    return fig


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
        _check_explanation(explanations[name])
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
    preprocessing = _check_preprocessing(preprocessing)
    alpha = _check_alpha(alpha)
    colormap = _colormap(cmap)
    pictures = {name: _pictures(images, explanations[name], preprocessing) for name in columns}
    base = pictures[columns[0]]

    ncol = len(columns) + 1
    title_lines = 2 if scores else 1
    fig = _figure(
        cell_inches * ncol + (0.7 if colorbar else 0.0),
        n * (cell_inches + 0.16 * title_lines + 0.12) + 0.3,
        layout="constrained",
    )
    axes = fig.subplots(n, ncol, squeeze=False)
    for i in range(n):
        head = "input\n" if i == 0 else ""
        _show(
            axes[i, 0],
            base[i].pixels,
            f"{head}{_label(first, i)}, {_probability(first, i)}",
            fontsize=8,
        )
        if labels:
            axes[i, 0].set_ylabel(_shortened(labels[i], int(cell_inches * 12)), fontsize=8)
        targets = {int(explanations[c].targets[i]) for c in columns}
        for j, name in enumerate(columns, start=1):
            e = explanations[name]
            lines = [name]
            if len(targets) > 1:
                lines[0] += f" ({_label(e, i)})"
            if name in scores:
                lines.append(
                    "  ".join(
                        f"{METRIC_ABBREVIATIONS.get(m, m)} {values[i]:.2f}"
                        for m, values in scores[name].items()
                    )
                )
            pixels = _composite(pictures[name][i], e, i, grid, alpha, colormap)
            _show(axes[i, j], pixels, "\n".join(lines), fontsize=8)
    if colorbar:
        _colorbar(fig, axes, colormap, shrink=min(0.9, 0.35 + 0.15 * n), aspect=25, pad=0.01)
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


def save_overlays(
    explanation: Explanation,
    out_dir: str | Path,
    names: list[str],
    *,
    preprocessing: Any | None = None,
    alpha: float = 0.5,
    grid: bool = False,
) -> list[Path]:
    """Write one PNG per image: the image, and the heatmap over it, titled with the target.

    Files are named ``<stem of name>_<method>.png`` in ``out_dir`` (created if missing). Names
    never collide: names that share a stem are named by their path below the folder they
    share, ``/`` written ``_`` (``d1/x.png``, ``d2/x.png`` -> ``d1_x_<method>.png``,
    ``d2_x_<method>.png``), and a name still taken (the same file twice; ``x.png`` beside
    ``x.jpg``) gets ``-2``, ``-3``, ... in the order given.

    Example:
        >>> import tempfile, torch, xvit
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> e = xvit.explain("attention", model, torch.randn(3, 3, 64, 64))
        >>> paths = save_overlays(e, tempfile.mkdtemp(), ["digit.png", "a/x.png", "b/x.png"])
        >>> [p.name for p in paths]
        ['digit_attention.png', 'a_x_attention.png', 'b_x_attention.png']
    """
    _check_explanation(explanation)
    if len(names) != len(explanation):
        raise InvalidInputError(
            f"got {len(names)} names for {len(explanation)} images; give one file name per image"
        )
    preprocessing = _check_preprocessing(preprocessing)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pictures = _pictures(None, explanation, preprocessing)
    colormap = _colormap(DEFAULT_CMAP)
    paths = []
    for i, stem in enumerate(_distinct_stems(names)):
        fig = _figure(6.4, 3.4, layout="constrained")
        left, right = fig.subplots(1, 2)
        _show(left, pictures[i].pixels, "input")
        title = f"{explanation.method}: {_label(explanation, i)}, {_probability(explanation, i)}"
        _show(right, _composite(pictures[i], explanation, i, grid, alpha, colormap), title)
        _colorbar(fig, right, colormap, fraction=0.046, pad=0.04)
        path = out / f"{stem}_{explanation.method}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _distinct_stems(names: Sequence[str]) -> list[str]:
    """One distinct file stem per name, by the rule :func:`save_overlays` states."""
    paths = [PurePath(os.path.abspath(name)) for name in names]
    stems = [p.stem for p in paths]
    out = list(stems)
    for stem in dict.fromkeys(stems):
        group = [i for i, s in enumerate(stems) if s == stem]
        if len(group) < 2:
            continue
        folders = [str(paths[i].parent) for i in group]
        try:
            shared = os.path.commonpath(folders)
        except ValueError:  # on different drives
            shared = ""
        for i, folder in zip(group, folders):
            below = PurePath(os.path.relpath(folder, shared)).parts if shared else ()
            out[i] = "_".join([*(part for part in below if part != "."), stem])
    taken: set[str] = set()
    for i, label in enumerate(out):
        k = 1
        while out[i] in taken:
            k += 1
            out[i] = f"{label}-{k}"
        taken.add(out[i])
    return out


# --- public: benchmark plots ---------------------------------------------------------------
def _summaries_and_fractions(
    results: Any, fractions: Mapping[str, Sequence[float]] | None
) -> tuple[list[Any], dict[str, list[float]]]:
    if hasattr(results, "summaries"):
        summaries = list(results.summaries)
        fractions = fractions if fractions is not None else getattr(results, "fractions", {})
    else:
        summaries = list(results)
    if not all(hasattr(s, "method") and hasattr(s, "curves") for s in summaries):
        raise InvalidInputError(
            "plot_curves and plot_times take what xvit.bench.run_benchmark returns, or its "
            "list of MethodSummary"
        )
    return summaries, {k: list(v) for k, v in (fractions or {}).items()}


def _method_colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


_CURVE_WORDS = {"insertion": "inserted", "deletion": "deleted"}


def plot_curves(
    results: Any,
    fractions: Mapping[str, Sequence[float]] | None = None,
    *,
    metrics: Sequence[str] | None = None,
) -> Any:
    """Mean insertion and deletion curves per method, with shaded 95% confidence bands.

    The band at each point is the two-sided 95% Student-t interval of the mean over images
    (computed by :func:`xvit.bench.run_benchmark`'s summary, needs two images or more); the
    legend gives each method's mean AUC.

    Args:
        results: What :func:`xvit.bench.run_benchmark` returns, or its list of
            :class:`~xvit.bench.MethodSummary` (then pass ``fractions``).
        fractions: Curve metric -> x positions of its points (``results.fractions``).
        metrics: Which curve metrics to draw (default: every one with curves, insertion and
            deletion first).

    Returns:
        The matplotlib Figure, one panel per curve metric.

    Raises:
        ParameterError: The results hold no curves (run the insertion or deletion metric).

    Example:
        >>> import timm
        >>> from PIL import Image
        >>> from types import SimpleNamespace as S
        >>> from xvit.bench import run_benchmark
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> data = [S(image=Image.new("RGB", (32, 32), (9 * i, 0, 0)), label=1, boxes=(),
        ...           id=str(i)) for i in range(3)]
        >>> r = run_benchmark(m, data, methods="attention,random", metrics="insertion,deletion",
        ...                   n=3, progress=False)
        >>> print(r.table)  # doctest: +ELLIPSIS
        | method | n | insertion ↑ | deletion ↓ | time (s) | expl/s |
        ...
        >>> fig = plot_curves(r)
        >>> [ax.get_title() for ax in fig.axes]
        ['insertion (higher AUC is better)', 'deletion (lower AUC is better)']
    """
    summaries, fracs = _summaries_and_fractions(results, fractions)
    available = [m for m in fracs if any(m in s.curves for s in summaries)]
    order = list(_CURVE_WORDS)
    available.sort(key=lambda m: order.index(m) if m in order else len(order))
    if metrics is None:
        chosen = available
    else:
        chosen = list(metrics)
        missing = [m for m in chosen if m not in available]
        if missing:
            raise ParameterError(
                f"no curves for {', '.join(missing)} in these results; they have curves for: "
                f"{', '.join(available) or '(none)'}"
            )
    if not chosen:
        raise ParameterError(
            "these results hold no curves: run the benchmark with the insertion and/or "
            "deletion metric (e.g. --metrics insertion,deletion)"
        )
    colours = _method_colours([s.method for s in summaries])
    fig = _figure(4.6 * len(chosen) + 1.6, 3.8, layout="constrained")
    axes = fig.subplots(1, len(chosen), squeeze=False)[0]
    for ax, metric in zip(axes, chosen):
        x = np.asarray(fracs[metric], dtype=np.float64)
        for s in summaries:
            if metric not in s.curves:
                continue
            mean = np.asarray(s.curves[metric], dtype=np.float64)
            if mean.shape != x.shape:
                continue
            auc = s.metrics[metric].mean if metric in s.metrics else float("nan")
            label = s.method if math.isnan(auc) else f"{s.method} ({auc:.3f})"
            ax.plot(x, mean, color=colours[s.method], lw=1.6, label=label)
            band = getattr(s, "bands", {}).get(metric)
            if band is not None:
                low, high = (np.asarray(b, dtype=np.float64) for b in band)
                if low.shape == x.shape and np.isfinite(low).all() and np.isfinite(high).all():
                    ax.fill_between(x, low, high, color=colours[s.method], alpha=0.13, lw=0)
        better = {"insertion": "higher", "deletion": "lower"}.get(metric)
        title = metric if better is None else f"{metric} ({better} AUC is better)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"fraction of pixels {_CURVE_WORDS.get(metric, 'changed')}", fontsize=9)
        ax.set_ylabel("target-class probability", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, title="method (mean AUC)", title_fontsize=7, loc="best")
    return fig


def plot_times(results: Any) -> Any:
    """A bar chart of explanation time per image for each method (log scale when the times
    span more than a factor of 30).

    Args:
        results: What :func:`xvit.bench.run_benchmark` returns, or its list of
            :class:`~xvit.bench.MethodSummary`.

    Returns:
        The matplotlib Figure.

    Example:
        >>> from xvit.bench import MethodSummary
        >>> fig = plot_times([MethodSummary("fast", images=10, time_s=0.5),
        ...                   MethodSummary("slow", images=10, time_s=40.0)])
        >>> fig.axes[0].get_xscale()
        'log'
    """
    summaries, _ = _summaries_and_fractions(results, None)
    rows = [s for s in summaries if s.images > 0]
    if not rows:
        raise ParameterError("these results hold no timed explanations")
    per_image = [s.time_s / s.images for s in rows]
    colours = _method_colours([s.method for s in summaries])
    fig = _figure(6.4, 0.45 * len(rows) + 1.3, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    ax.barh(y, per_image, color=[colours[s.method] for s in rows], height=0.65)
    ax.set_yticks(y, [s.method for s in rows], fontsize=9)
    ax.invert_yaxis()
    positive = [t for t in per_image if t > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
    top = max(per_image) if per_image else 1.0
    ax.set_xlim(right=top * (8 if ax.get_xscale() == "log" else 1.35))
    for yi, t in zip(y, per_image):
        rate = f"{1 / t:.1f}/s" if t > 0 else "n/a"
        ax.annotate(
            f"{t:.3g} s ({rate})",
            (t, yi),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("seconds per image (explanation only, metrics excluded)", fontsize=9)
    counts = {s.images for s in rows}
    over = f" ({counts.pop()} images)" if len(counts) == 1 else ""
    ax.set_title(f"explanation time per image{over}", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig
