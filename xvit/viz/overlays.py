"""Maps drawn over the images they explain: one map as an array (:func:`heatmap`,
:func:`overlay_array`), figures of a batch (:func:`overlay`), and one PNG per image
(:func:`save_overlays`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from .._errors import InvalidInputError, ParameterError
from .._inputs import as_image
from ..explanation import Explanation
from ._compositing import DEFAULT_CMAP, check_alpha, composite, get_colormap, map_on
from ._figures import add_colorbar, method_title, new_figure, show
from ._pictures import (
    IDENTITY,
    Picture,
    check_explanation,
    check_index,
    check_preprocessing,
    input_view,
    pictures_for,
)

__all__ = ["display_images", "heatmap", "overlay", "overlay_array", "save_overlays"]


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
    check_explanation(explanation)
    index = check_index(index, len(explanation))
    native = explanation.normalized()[index].detach().float().cpu().numpy()
    canvas = Picture(np.zeros((*explanation.input_size, 0), np.float32), IDENTITY)
    return map_on(canvas, native, explanation.input_size, grid)[0]


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
    check_explanation(explanation)
    preprocessing = check_preprocessing(preprocessing)
    height, width = explanation.input_size
    if explanation.inputs is not None:
        return [input_view(x, preprocessing) for x in explanation.inputs]
    if explanation.images is not None:
        from PIL import Image

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
    check_explanation(explanation)
    index = check_index(index, len(explanation))
    alpha = check_alpha(alpha)
    colormap = get_colormap(cmap)
    preprocessing = check_preprocessing(preprocessing)
    if image is None:
        picture = pictures_for(None, explanation, preprocessing)[index]
    else:
        batch = isinstance(image, (list, tuple)) or (
            isinstance(image, torch.Tensor) and image.dim() == 4
        )
        if batch and len(image) == len(explanation):
            image = image[index]  # the batch the explanation was made from
        single = _select(explanation, index)
        picture = pictures_for(image, single, preprocessing)[0]
        explanation, index = single, 0
    return composite(picture, explanation, index, grid, alpha, colormap)


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
    check_explanation(explanation)
    alpha = check_alpha(alpha)
    colormap = get_colormap(cmap)
    preprocessing = check_preprocessing(preprocessing)
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ParameterError(f"ncols must be a positive integer, got {ncols!r}")
    pictures = pictures_for(images, explanation, preprocessing)
    chosen = list(range(len(explanation))) if index is None else [check_index(index, len(pictures))]
    if ax is not None and len(chosen) != 1:
        raise ParameterError(
            f"ax= draws one image, but the explanation holds {len(chosen)}; pass index= too"
        )
    if ax is not None:
        fig, axes = ax.figure, [ax]
    else:
        cols = min(ncols, len(chosen))
        rows = math.ceil(len(chosen) / cols)
        fig = new_figure(2.6 * cols + (0.7 if colorbar else 0.0), 2.8 * rows, layout="constrained")
        grid_axes = fig.subplots(rows, cols, squeeze=False)
        axes = list(grid_axes.flat)
        for extra in axes[len(chosen) :]:
            extra.set_axis_off()
        axes = axes[: len(chosen)]
    for a, i in zip(axes, chosen):
        text = None
        if title:
            text = method_title(explanation, i)
        show(a, composite(pictures[i], explanation, i, grid, alpha, colormap), text)
    if colorbar:
        add_colorbar(fig, axes, colormap, shrink=0.9)
    return fig


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
    check_explanation(explanation)
    if len(names) != len(explanation):
        raise InvalidInputError(
            f"got {len(names)} names for {len(explanation)} images; give one file name per image"
        )
    preprocessing = check_preprocessing(preprocessing)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pictures = pictures_for(None, explanation, preprocessing)
    colormap = get_colormap(DEFAULT_CMAP)
    paths = []
    for i, stem in enumerate(_distinct_stems(names)):
        fig = new_figure(6.4, 3.4, layout="constrained")
        left, right = fig.subplots(1, 2)
        show(left, pictures[i].pixels, "input")
        title = method_title(explanation, i)
        show(right, composite(pictures[i], explanation, i, grid, alpha, colormap), title)
        add_colorbar(fig, right, colormap, fraction=0.046, pad=0.04)
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
