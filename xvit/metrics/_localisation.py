"""What the localisation metrics' functions share: maps and ground truth at one size.

The classes get both from :meth:`Metric.__call__ <xvit.metrics.Metric.__call__>`, at the
size of ``x_batch``; the functional twins (:func:`~xvit.metrics.functional.pointing_game`,
:func:`~xvit.metrics.functional.energy_pointing_game`) have no images and take the size from
``size=``, the Explanation or the maps themselves.
"""

from __future__ import annotations

import torch

from .._errors import InvalidInputError
from ..explanation import Explanation
from ._base import Saliency, saliency_at
from ._boxes import Boxes, box_masks


def map_size(a_batch: Saliency, size: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) at which to play: ``size``, else the Explanation's input size, else the maps'.

    Example:
        >>> import torch
        >>> map_size(torch.zeros(2, 4, 6), None), map_size(torch.zeros(2, 4, 6), (32, 48))
        ((4, 6), (32, 48))
    """
    if size is not None:
        return int(size[0]), int(size[1])
    if isinstance(a_batch, Explanation):
        return a_batch.input_size
    if isinstance(a_batch, torch.Tensor) and a_batch.dim() == 3:
        return int(a_batch.shape[-2]), int(a_batch.shape[-1])
    raise InvalidInputError(
        f"saliency maps must be B x h x w, got {type(a_batch).__name__} "
        f"{tuple(a_batch.shape) if isinstance(a_batch, torch.Tensor) else ''}"
    )


def maps_and_masks(
    a_batch: Saliency, s_batch: Boxes, size: tuple[int, int] | None, upsample: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """B x H x W maps (float, on the CPU) and ground-truth masks (bool) at the size
    :func:`map_size` gives, the maps brought there with ``upsample``.

    Example:
        >>> import torch
        >>> maps, masks = maps_and_masks(torch.rand(1, 2, 2), [[(0, 0, 2, 2)]], (4, 4), "nearest")
        >>> maps.shape, int(masks.sum())
        (torch.Size([1, 4, 4]), 4)
    """
    h, w = map_size(a_batch, size)
    maps = saliency_at(a_batch, (h, w), upsample).cpu()
    return maps, box_masks(s_batch, (h, w), maps.shape[0])
