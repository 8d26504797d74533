"""What the pixel-gradient methods share (Integrated Gradients, SmoothGrad): their
``pooling`` to the patch grid, their inputs per gradient pass, and the loop that runs
the gradient passes over many model inputs per image in chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .._constraints import OneOf
from .._forward import resolve_batch_size
from .._progress import count_forwards
from .._targets import Target
from ..models._base import ModelAdapter
from ._gradients import input_gradients

#: The constraint of ``pooling``: how a C x H x W attribution becomes one score per patch.
POOLING = OneOf("signed", "abs")

#: A gradient pass keeps every block's activations for the backward: under "auto" one input
#: is counted as this many forward inputs when the pass is sized from free memory.
GRADIENT_INPUT_WEIGHT = 16


def pool_to_patches(
    attributions: torch.Tensor, adapter: ModelAdapter, pooling: str
) -> torch.Tensor:
    """B x C x H x W pixel attributions as B x h x w patch scores: each patch's sum over its
    pixels and channels, of the signed values ("signed") or of their absolute values ("abs").

    A mean instead of the sum would divide every score by the same patch area, so it would
    change no ranking and no metric; it is not offered.

    Example:
        >>> import xvit
        >>> adapter = xvit.get_adapter(xvit.load_model("xvit:digits-vit"))  # 8 x 8 pixel patches
        >>> a = torch.zeros(1, 3, 64, 64); a[0, 0, 0, 0], a[0, 1, 0, 1] = 2.0, -3.0
        >>> signed, absolute = (pool_to_patches(a, adapter, p) for p in ("signed", "abs"))
        >>> signed.shape, signed[0, 0, 0], absolute[0, 0, 0]
        (torch.Size([1, 8, 8]), tensor(-1.), tensor(5.))
    """
    b, _, height, width = attributions.shape
    gh, gw = adapter.geometry.grid(int(height), int(width))
    ph, pw = adapter.geometry.patch_size
    values = attributions.abs() if pooling == "abs" else attributions
    per_pixel = values.sum(dim=1)[:, : gh * ph, : gw * pw]  # the pixels the patches cover
    return per_pixel.reshape(b, gh, ph, gw, pw).sum(dim=(2, 4))


def inputs_per_pass(batch_size: int | str, adapter: ModelAdapter, inputs: torch.Tensor) -> int:
    """Model inputs per gradient pass: ``batch_size``, or for "auto" a number sized from free
    device memory with each input weighted :data:`GRADIENT_INPUT_WEIGHT` times a forward's."""
    per_input = inputs[0].numel() * inputs.element_size() * GRADIENT_INPUT_WEIGHT
    return resolve_batch_size(batch_size, adapter.device, per_input)


def target_of(target: Target, owners: torch.Tensor) -> Target:
    """The target of model inputs made from images ``owners``: their classes, or the same
    score function (it scores each row alone)."""
    return target[owners] if isinstance(target, torch.Tensor) else target


def chunked_input_gradients(
    adapter: ModelAdapter,
    target: Target,
    per_image: int,
    images: int,
    chunk: int,
    device: torch.device,
    make_inputs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Gradient passes over ``images x per_image`` model inputs, ``chunk`` at a time.

    Input ``k`` of image ``i`` is row ``i * per_image + k`` of the flat sequence;
    ``make_inputs(owners, steps)`` builds the rows of one chunk from their image indices and
    their indices within the image (both on ``device``). Yields, per chunk, ``(owners,
    steps, inputs, gradients)``: the gradient of each row's target score at that row.
    """
    total = images * per_image
    for start in range(0, total, chunk):
        rows = torch.arange(start, min(start + chunk, total), device=device)
        owners, steps = rows // per_image, rows % per_image
        x = make_inputs(owners, steps)
        grads = input_gradients(adapter, x, target_of(target, owners))
        count_forwards(len(rows))  # the progress meter of the explain call, if any
        yield owners, steps, x, grads
