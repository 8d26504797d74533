"""Maps on pictures: each map min-max scaled, resampled onto the picture's pixels (bilinear,
or nearest on the native patch grid) and alpha-blended over them in a colormap."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import ParameterError
from ..explanation import Explanation
from ._pictures import Picture

#: The default colormap: perceptually uniform, readable in greyscale and by colour-blind readers.
DEFAULT_CMAP = "inferno"


def get_colormap(cmap: Any) -> Any:
    """A matplotlib colormap from itself or its name."""
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


def check_alpha(alpha: Any) -> float:
    """The heatmap's opacity, checked to be in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ParameterError(f"alpha (the heatmap's opacity) must be in [0, 1], got {alpha!r}")
    return float(alpha)


def _bilinear_taps(coord: np.ndarray, n_in: float, n_map: int) -> tuple[Any, Any, Any]:
    """Indices and weights of linear interpolation with half-pixel centres, clamped at the
    edges (as ``torch.nn.functional.interpolate(..., align_corners=False)``)."""
    p = np.maximum(coord * n_map / n_in - 0.5, 0.0)
    i0 = np.minimum(np.floor(p).astype(np.int64), n_map - 1)
    i1 = np.minimum(i0 + 1, n_map - 1)
    return i0, i1, (p - i0).astype(np.float32)


def map_on(
    picture: Picture, native: np.ndarray, input_size: tuple[int, int], grid: bool
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


def composite(
    picture: Picture,
    explanation: Explanation,
    index: int,
    grid: bool,
    alpha: float,
    cmap: Any,
) -> np.ndarray:
    """Map ``index`` of ``explanation`` over ``picture``: ``(1 - alpha) * pixels +
    alpha * cmap(saliency)`` where the model saw the picture, the pixels elsewhere."""
    native = explanation.normalized()[index].detach().float().cpu().numpy()
    values, covered = map_on(picture, native, explanation.input_size, grid)
    colours = cmap(np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32)
    weight = alpha * covered[..., None].astype(np.float32)
    return (1 - weight) * picture.pixels + weight * colours
