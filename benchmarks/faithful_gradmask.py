"""A faithful per-image GradMask, doing what the authors' code does, kept as a speed baseline.

One image at a time, fp32, eager attention (no fused kernel): one forward with hooks that keep
the q/k/v projection outputs, ``.backward()`` of the target logit, masks built from the
gradients, then all K masked copies of that image in ONE forward, softmax probability of the
target, weighted sum. It exists only so the benchmark can report xvit's speed-up against it
in the same run; it is not part of the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _set_fused(model: nn.Module, value: bool) -> list[tuple[nn.Module, bool]]:
    saved = []
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            saved.append((module, module.fused_attn))
            module.fused_attn = value
    return saved


def faithful_gradmask_one(
    model: nn.Module, image: torch.Tensor, target: int | None, masks_per_layer: int = 4
) -> torch.Tensor:
    """GradMask map (h x w) of one preprocessed image (C x H x W) for a timm ViT."""
    blocks = list(model.blocks)
    prefix = int(model.num_prefix_tokens)
    ph, pw = model.patch_embed.patch_size
    h, w = image.shape[-2] // ph, image.shape[-1] // pw
    outputs: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        outputs.append(out)

    handles = [b.attn.qkv.register_forward_hook(keep) for b in blocks]
    saved = _set_fused(model, False)
    try:
        x = image.unsqueeze(0)
        logits = model(x)
        cls = int(logits.argmax()) if target is None else target
        model.zero_grad(set_to_none=True)
        logits[0, cls].backward()
        for handle in handles:
            handle.remove()
        rows = {"q": [], "k": [], "v": []}
        for out in outputs[:-1]:  # all blocks but the last, as the authors' code
            g = out.grad[0]  # N x 3D
            d = g.shape[-1] // 3
            for n, name in enumerate(("q", "k", "v")):
                part = g[:, n * d : (n + 1) * d]
                sums = part.reshape(part.shape[0], masks_per_layer, -1).sum(-1).clamp_min(0)
                rows[name].append(sums[prefix:].T)  # M x P
        scores = torch.cat(rows["q"] + rows["k"] + rows["v"])  # K x P
        masks = (scores >= scores.mean(-1, keepdim=True)).float().reshape(-1, 1, h, w)
        big = F.interpolate(masks, size=image.shape[-2:], mode="nearest")
        with torch.no_grad():
            probs = model(x * big).softmax(-1)[:, cls]
        return (probs[:, None, None] * masks[:, 0]).sum(0)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in saved:
            module.fused_attn = flag
        model.zero_grad(set_to_none=True)


def faithful_gradmask(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, masks_per_layer: int = 4
) -> torch.Tensor:
    """Per-image loop over a batch (B x C x H x W) -> B x h x w."""
    model.eval()
    return torch.stack(
        [
            faithful_gradmask_one(model, img, int(t), masks_per_layer)
            for img, t in zip(images, targets)
        ]
    )
