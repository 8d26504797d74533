"""GradMask: gradient-derived binary patch masks weighted by the model's confidence."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from .._constraints import Integer, Literal, Real, Rule, Satisfies, Spec, check_param
from .._errors import ParameterError
from .._forward import TakesForwardOptions
from .._targets import Target, masked_scores, target_rows
from ..models._base import Geometry, ModelAdapter
from ..models._capture import QKV
from ._base import Cost, Explainer
from ._gradients import target_gradient_pass
from ._registration import register_method
from ._scoring import fill_perturb, score_binary_masks


def _is_index_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(Integer().accepts(v) for v in value)
    )


#: The constraint of ``blocks``; the indices are checked against the model at call time.
BLOCKS = Rule(
    Literal(None, "all but the last"),
    Literal("all"),
    Satisfies(Integer().accepts, "a block index"),
    Satisfies(_is_index_list, "a non-empty list of block indices"),
)


def resolve_blocks(blocks: Any, num_blocks: int, method: str) -> list[int]:
    """Block selection: None -> all but the last; "all"; or a sequence of (negative ok) indices."""
    blocks = check_param(method, "blocks", blocks, BLOCKS)
    if blocks is None:
        return list(range(max(num_blocks - 1, 1)))
    if blocks == "all":
        return list(range(num_blocks))
    if isinstance(blocks, int):
        blocks = [blocks]
    out = []
    for b in blocks:
        if not -num_blocks <= b < num_blocks:
            raise ParameterError(
                f"{method}: block index {b!r} is out of range for a model with {num_blocks} "
                f"blocks (valid: {-num_blocks} .. {num_blocks - 1})"
            )
        out.append(b % num_blocks)
    return out


#: A gradient pass takes ``batch_size // GRADIENT_SHARE`` images at a time...
GRADIENT_SHARE = 16
#: ...and at least this many token rows (images x tokens), up to ``batch_size`` images: a
#: pass of fewer rows leaves the cores waiting between small kernels (the digits ViT's 65
#: tokens: 16 images instead of 4, 35% less time per image on 2 CPU cores), while its memory,
#: some GRADIENT_ROWS tokens' activations, stays small wherever the rule adds images.
GRADIENT_ROWS = 1024
#: The masks of ``batch_size // SCORING_SHARE`` images are scored together.
SCORING_SHARE = 8


@register_method
class GradMask(TakesForwardOptions, Explainer):
    """GradMask (Marchetti, Traini, Ursino, Virgili, IJCNN 2025).

    One forward and backward of the target logit gives the gradients of every block's query,
    key and value projections. Each projection's D channels are split into M contiguous
    groups; each group's gradient sum over its channels, clamped at 0, gives one row of P patch
    scores (prefix tokens dropped), and ``row >= mean(row)`` a binary patch mask. The
    3 x |blocks| x M masks (all q masks block-major then group, then k, then v) are applied to
    the preprocessed image (masked-out pixels take ``fill``, by default 0, the normalised mean
    colour), scored by the model, and the probability-weighted sum of the masks is the map.

    Args:
        masks_per_layer: M, masks per projection and block; must divide the hidden size.
        blocks: Blocks used: None (default) for all but the last, as the authors' code does
            (a CLS-pooled model's last-block patch queries get no gradient); "all"; or indices.
        fill: Value of masked-out pixels in the model's input space.
        batch_size: Model inputs (masked images) per forward, an int or "auto"; the gradient
            pass takes ``batch_size // 16`` images at a time (more, up to ``batch_size``, when
            that is under 1,024 tokens: 16 images of 65 tokens) and the masks of about
            ``batch_size // 8`` images are scored together, so memory stays bounded for any
            number of images.
        precision: "fp32", or "bf16" for bfloat16 autocast in the masked forwards (the
            gradient pass that builds the masks always runs in the model's own precision).
        compile: Run the masked forwards through ``torch.compile``.

    Identical masks of an image are scored once, an all-ones mask reuses the unmasked
    forward, the last block runs for the prefix rows only where the head reads nothing else,
    and each masked copy starts from the image's patch tokens (and block-0 q/k/v) rather
    than its pixels where the model's family allows it (the ``"patch_tokens"`` capability:
    every built-in family); the map is unchanged by these savings.

    With a score function as the target (see :func:`xvit.explain`), its score is
    differentiated instead of the target logit, and each masked copy is weighted by its
    score instead of the target probability.

    References:
        M. Marchetti, D. Traini, D. Ursino, L. Virgili, "Integrating Gradient and Mask-based
        Approaches for Vision Transformer Explainability", IJCNN 2025.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=3,
        ...                       img_size=32, patch_size=8)
        >>> xvit.explain("gradmask", m, torch.randn(2, 3, 32, 32)).map.shape
        torch.Size([2, 4, 4])
    """

    name = "gradmask"
    summary = "gradients of q/k/v become binary patch masks, weighted by the model's confidence"
    paper = (
        "Marchetti et al., Integrating Gradient and Mask-based Approaches for Vision "
        "Transformer Explainability, IJCNN 2025"
    )
    family = "gradient+mask"
    needs_gradients = True
    needs_qkv = True
    score_targets = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "masks_per_layer": Integer(low=1),
        "blocks": BLOCKS,
        "fill": Real(),
    }

    def __init__(
        self,
        *,
        masks_per_layer: int = 4,
        blocks: Any = None,
        fill: float = 0.0,
        batch_size: int | str = 64,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        self.masks_per_layer = masks_per_layer
        self.blocks = blocks
        self.fill = fill
        self.batch_size = batch_size
        self.precision = precision
        self.compile = compile

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """One gradient pass and at most K = 3 x |blocks| x M masked forwards per image
        (identical masks and all-ones masks are not forwarded)."""
        blocks = resolve_blocks(self.blocks, geometry.num_blocks, self.name)
        k = len(QKV) * len(blocks) * self.masks_per_layer
        return Cost(forwards=k, gradient_passes=1, at_most=True)

    def masks(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        """The binary patch masks, B x K x h x w (K = 3 x |blocks| x M), in the paper's order."""
        return self._masks_and_probs(adapter, inputs, target)[0]

    def _masks_and_probs(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks, and the target probability (or score) of each unmasked image."""
        geo = adapter.geometry
        d, m = geo.hidden_size, self.masks_per_layer
        if d % m:
            divisors = [k for k in range(1, d + 1) if d % k == 0]
            raise ParameterError(
                f"gradmask: masks_per_layer={m} does not divide the hidden size {d}; "
                f"choose one of {divisors}"
            )
        blocks = resolve_blocks(self.blocks, geo.num_blocks, self.name)
        gh, gw = geo.grid(inputs.shape[-2], inputs.shape[-1])
        prefix = geo.num_prefix_tokens
        with target_gradient_pass(adapter, inputs, target, qkv=True) as (cap, logits, score):
            grads = cap.qkv_grads(score)
        base = masked_scores(logits.detach(), target)
        rows = []
        for proj in QKV:
            for b in blocks:
                g = grads[proj][b].detach()  # B x N x D
                bsz, n, _ = g.shape
                group_sums = g.reshape(bsz, n, m, d // m).sum(-1).clamp_min(0)  # B x N x M
                rows.append(group_sums[:, prefix:, :].transpose(1, 2))  # B x M x P
        scores = torch.cat(rows, dim=1)  # B x K x P
        masks = (scores >= scores.mean(dim=-1, keepdim=True)).to(inputs.dtype)
        return masks.reshape(masks.shape[0], masks.shape[1], gh, gw), base

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        per_item = inputs[0].numel() * inputs.element_size()
        chunk = self.forward_options.inputs_per_forward(adapter.device, per_item)
        options = dataclasses.replace(self.forward_options, batch_size=chunk)
        # A gradient pass keeps every block's activations (and attention) of its images for
        # the backward, far more per image than a masked forward; GRADIENT_SHARE images per
        # pass keep it near one chunk of masked forwards, GRADIENT_ROWS token rows keep the
        # cores busy. The masks of SCORING_SHARE images are scored together so that chunks
        # stay full.
        tokens = adapter.geometry.num_tokens(inputs.shape[-2], inputs.shape[-1])
        fill_cores = min(chunk, -(-GRADIENT_ROWS // tokens))
        grad_images = max(1, chunk // GRADIENT_SHARE, fill_cores)
        # whole gradient passes per scoring group
        scored_images = grad_images * max(1, -(-(chunk // SCORING_SHARE) // grad_images))
        maps = []
        for start in range(0, inputs.shape[0], scored_images):
            x = inputs[start : start + scored_images]
            t = target_rows(target, start, start + scored_images)
            parts = [
                self._masks_and_probs(adapter, xs, target_rows(t, i, i + grad_images))
                for i, xs in zip(range(0, len(x), grad_images), x.split(grad_images))
            ]
            masks = torch.cat([p[0] for p in parts])
            base = torch.cat([p[1] for p in parts])
            probs = score_binary_masks(
                adapter,
                x,
                t,
                masks,
                base_probs=base,
                options=options,
                perturb=fill_perturb(self.fill),
                upsample="nearest",
            )
            maps.append(torch.einsum("bk,bkhw->bhw", probs.to(masks.dtype), masks))
        return torch.cat(maps)
