"""The shared mask-scoring kernel: score many masked copies of each image in batches.

GradMask, RISE and ViT-CX all forward masked (or perturbed) inputs and read the target-class
probability. This module does that once: masks of all images are flattened into one list of
(image, mask) pairs and scored in chunks of ``batch_size`` forwards, without a Python loop
per mask, in ``torch.inference_mode``, on the model's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..models._base import ModelAdapter

Perturb = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fill_perturb(fill: float | torch.Tensor = 0.0) -> Perturb:
    """x * m + fill * (1 - m): masked-out pixels take the value ``fill`` (input space)."""

    def perturb(x: torch.Tensor, m: torch.Tensor, _index: torch.Tensor) -> torch.Tensor:
        if isinstance(fill, torch.Tensor) or fill != 0:
            return x * m + torch.as_tensor(fill, dtype=x.dtype, device=x.device) * (1 - m)
        return x * m

    return perturb


def resolve_batch_size(batch_size: int | str, adapter: ModelAdapter, per_item_bytes: int) -> int:
    """A concrete chunk size; "auto" sizes chunks from free device memory (CPU: 64)."""
    if batch_size != "auto":
        return int(batch_size)
    device = adapter.device
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # activations of a ViT forward are roughly 40x the input tensor; keep half free
        est = max(1, int(free * 0.5 // max(per_item_bytes * 40, 1)))
        return int(min(est, 1024))
    return 64


def upsample_masks(masks: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """(..., h, w) masks to (..., H, W); no copy when already at that size."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:])
    if mode == "nearest":
        up = F.interpolate(flat, size=size, mode="nearest")
    else:
        up = F.interpolate(flat, size=size, mode=mode, align_corners=False)
    return up.reshape(*lead, *size)


def score_masks(
    adapter: ModelAdapter,
    inputs: torch.Tensor,
    target: torch.Tensor,
    masks: torch.Tensor,
    *,
    batch_size: int | str = 64,
    perturb: Perturb | None = None,
    upsample: str = "nearest",
) -> torch.Tensor:
    """Target-class probability of every masked copy of every image.

    Args:
        adapter: The model.
        inputs: B x C x H x W preprocessed images.
        target: (B,) target classes.
        masks: B x K x h x w (one set per image) or K x h x w (shared by all images); upsampled
            to H x W with ``upsample`` mode when smaller.
        batch_size: Masked images per forward, or "auto".
        perturb: How a mask is applied, ``(x, m, pair_index) -> x'`` on chunks; default
            ``x * m`` (masked-out pixels become 0, the normalised mean colour).
        upsample: Interpolation mode used to bring masks to the input size.

    Returns:
        B x K probabilities ``softmax(logits)[target]`` (float32).
    """
    b, c, h, w = inputs.shape
    masks = masks.to(inputs.device)
    shared = masks.dim() == 3
    k = masks.shape[0] if shared else masks.shape[1]
    perturb = perturb or fill_perturb(0.0)
    chunk = resolve_batch_size(batch_size, adapter, c * h * w * inputs.element_size())
    total = b * k
    out = torch.empty(total, dtype=torch.float32, device=inputs.device)
    with torch.inference_mode():
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total), device=inputs.device)
            img, mask_i = idx // k, idx % k
            m = masks[mask_i] if shared else masks[img, mask_i]
            m = upsample_masks(m.to(inputs.dtype), (h, w), upsample).unsqueeze(1)
            x = perturb(inputs[img], m, idx)
            logits = adapter.forward_logits(x)
            probs = logits.float().softmax(dim=-1)
            out[start : start + len(idx)] = probs.gather(1, target[img].unsqueeze(1)).squeeze(1)
    return out.view(b, k)
