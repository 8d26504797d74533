"""Ground-truth boxes as pixel masks at the model's input resolution.

A box is (x0, y0, x1, y1) in input pixel coordinates measured at pixel edges (a box over
pixel columns 2, 3 and 4 is x0 = 2, x1 = 5), as
:meth:`xvit.Preprocessing.transform_boxes` returns them. A pixel belongs to a box when its
centre lies inside it (``x0 <= j + 0.5 < x1``); a box that covers part of the image but no
pixel centre (smaller than a pixel after resizing) marks the pixel that holds its centre, so
that no visible object disappears. Boxes entirely outside the image are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import InvalidInputError

#: Ground truth for the localisation metrics: per image a sequence of (x0, y0, x1, y1) boxes
#: in model-input pixel coordinates, or a B x H x W boolean mask.
Boxes = Sequence[Sequence[Sequence[float]]] | torch.Tensor


def require_boxes(s_batch: Any, metric: str) -> Any:
    """``s_batch`` itself, or an error saying the metric needs ground-truth boxes."""
    if s_batch is None:
        raise InvalidInputError(
            f"{metric} needs ground truth: pass s_batch, per image a list of (x0, y0, x1, y1) "
            f"boxes in input pixels (Preprocessing.transform_boxes maps them from the original "
            f"image)"
        )
    return s_batch


def _span(lo: float, hi: float, n: int) -> tuple[int, int] | None:
    """Pixel index range [start, stop) whose centres lie in [lo, hi), clipped to [0, n)."""
    clo, chi = max(lo, 0.0), min(hi, float(n))
    if chi <= clo:
        return None
    start = max(0, math.ceil(lo - 0.5))
    stop = min(n, math.ceil(hi - 0.5))
    if stop <= start:
        mid = min(n - 1, max(0, math.floor((clo + chi) / 2)))
        return mid, mid + 1
    return start, stop


def _check_box(box: Any) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InvalidInputError(f"a box must be four finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = values
    if x1 < x0 or y1 < y0:
        raise InvalidInputError(
            f"box {box!r} has x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1), top-left first"
        )
    return x0, y0, x1, y1


def box_masks(s_batch: Any, size: tuple[int, int], batch: int) -> torch.Tensor:
    """B x H x W boolean masks from per-image box lists, or a mask tensor checked as is.

    Raises:
        InvalidInputError: Wrong number of images, a malformed box, or a mask of the wrong
            shape.
    """
    h, w = size
    if isinstance(s_batch, torch.Tensor):
        if tuple(s_batch.shape) != (batch, h, w):
            raise InvalidInputError(
                f"ground-truth masks must be B x H x W = {batch} x {h} x {w} (the input size), "
                f"got {tuple(s_batch.shape)}"
            )
        return s_batch.detach().cpu().bool()
    if not isinstance(s_batch, Sequence) or isinstance(s_batch, str) or len(s_batch) != batch:
        got = len(s_batch) if isinstance(s_batch, Sequence) else type(s_batch).__name__
        raise InvalidInputError(
            f"s_batch must hold one list of (x0, y0, x1, y1) boxes per image ({batch} images), "
            f"got {got}; use an empty list for an image without boxes"
        )
    masks = torch.zeros(batch, h, w, dtype=torch.bool)
    for i, boxes in enumerate(s_batch):
        for box in boxes:
            x0, y0, x1, y1 = _check_box(box)
            cols, rows = _span(x0, x1, w), _span(y0, y1, h)
            if cols is None or rows is None:
                continue
            masks[i, rows[0] : rows[1], cols[0] : cols[1]] = True
    return masks
