"""The shared mask-scoring kernel: score many masked copies of each image in batches.

GradMask, RISE and ViT-CX all forward masked (or perturbed) inputs and read the target-class
probability, or, for a score-function target, that function's score of each masked copy
(:func:`~xvit._targets.masked_scores`). This module does that once: masks of all images are
flattened into one list of
(image, mask) pairs and scored in chunks of ``batch_size`` forwards, without a Python loop
per mask, in ``torch.inference_mode``, on the model's device. How those forwards run
(inputs per forward, precision, compilation) is one :class:`~xvit._forward.ForwardOptions`.

Three entry points share one loop:

- :func:`score_masks` with B x K or K x h x w masks: every image gets its own (or the same)
  K masks; B x K probabilities come back.
- :func:`score_masks` with ``owner``: a flat list of masks, each for one image, so images can
  carry different numbers of masks (ViT-CX's clusters) without padding.
- :func:`sum_weighted_masks`: a stream of shared mask chunks (RISE's thousands of random
  masks), reduced on the fly to ``sum_k p_k * m_k`` so memory does not grow with the count.

A mask usually perturbs pixels; with ``token_masks=True`` it names instead the patch tokens
a copy keeps, and the copy runs on those tokens alone (TIS), through
:class:`~xvit.models.TokenSubset`.

Binary pixel masks on the patch grid with a fill perturbation (GradMask's) keep or fill whole
patches; where the adapter has the ``"patch_tokens"`` capability such copies are scored from
the patch tokens and block-0 q/k/v of each image and of its filled copy, computed once, in
place of the patch embedding, pixel product and first projections of every copy
(:class:`~xvit.models._patch_tokens.PatchTokens`): the same logits, less work.

After each chunk the loop reports the forwards it made to the progress meter of the
:func:`xvit.explain` call, if any (:func:`xvit._progress.count_forwards`), so that progress
moves within a method's batch; the report only counts and changes no result.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from .._errors import InvalidInputError, ParameterError
from .._forward import ForwardOptions
from .._forward import resolve_batch_size as resolve_inputs_per_forward
from .._progress import count_forwards
from .._targets import Target, TargetScore, masked_scores
from ..models._base import ModelAdapter, check_finite_logits
from ..models._capture import TokenSubset
from ..models._patch_tokens import PatchTokens, patch_token_parts

Perturb = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FillPerturb:
    """``x * m + fill * (1 - m)``: masked-out pixels take the value ``fill`` (input space).

    With a binary mask it selects, pixel by pixel, between the image and its filled copy
    ``perturb(x, 0)``; :func:`score_masks` relies on that to score patch-masked copies from
    patch tokens (:mod:`xvit.models._patch_tokens`).
    """

    def __init__(self, fill: float | torch.Tensor = 0.0) -> None:
        self.fill = fill

    def __call__(self, x: torch.Tensor, m: torch.Tensor, _index: torch.Tensor) -> torch.Tensor:
        fill = self.fill
        if isinstance(fill, torch.Tensor) or fill != 0:
            return x * m + torch.as_tensor(fill, dtype=x.dtype, device=x.device) * (1 - m)
        return x * m


def fill_perturb(fill: float | torch.Tensor = 0.0) -> Perturb:
    """x * m + fill * (1 - m): masked-out pixels take the value ``fill`` (input space)."""
    return FillPerturb(fill)


def resolve_batch_size(batch_size: int | str, adapter: ModelAdapter, per_item_bytes: int) -> int:
    """Model inputs per forward for ``batch_size`` on the adapter's device.

    Kept for :mod:`xvit.metrics` until it moves to :class:`~xvit._forward.ForwardOptions`;
    new code calls :meth:`ForwardOptions.inputs_per_forward`.
    """
    return resolve_inputs_per_forward(batch_size, adapter.device, per_item_bytes)


def forward_options(
    options: ForwardOptions | None = None,
    *,
    batch_size: int | str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
) -> ForwardOptions:
    """``options``, or one made from the separate keywords the kernel has always taken (those
    not given keep :class:`~xvit._forward.ForwardOptions`' defaults); not both.

    Example:
        >>> forward_options(batch_size=8)
        ForwardOptions(batch_size=8, precision='fp32', compile=False)
    """
    given: dict[str, Any] = {
        key: value
        for key, value in (
            ("batch_size", batch_size),
            ("precision", precision),
            ("compile", compile),
        )
        if value is not None
    }
    if options is None:
        return ForwardOptions(**given)
    if given:
        raise ParameterError(
            f"got options= and {', '.join(given)}=; pass the forward options one way: "
            f"options=ForwardOptions(...), or the separate keywords"
        )
    return options


_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, Callable[..., torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def scoring_forward(
    adapter: ModelAdapter, options: ForwardOptions, pad_to: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits function used for masked forwards: the model's own (fused/SDPA) attention,
    under bf16 autocast and/or ``torch.compile`` as ``options`` say."""
    base: Callable[[torch.Tensor], torch.Tensor] = adapter.scoring_logits
    if options.compile:
        compiled = _COMPILED.get(adapter.model)
        if compiled is None:
            compiled = torch.compile(adapter.scoring_logits, dynamic=False)
            _COMPILED[adapter.model] = compiled
        base = compiled
    device_type = adapter.device.type

    def forward(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if pad_to is not None and n < pad_to:  # one shape for the compiled graph
            x = torch.cat([x, x[-1:].expand(pad_to - n, *x.shape[1:])])
        bf16 = options.precision == "bf16"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = adapter.logits(x, check_finite=False, forward=base)
        return logits[:n]

    return forward


def score_binary_masks(
    adapter: ModelAdapter,
    inputs: torch.Tensor,
    target: Target,
    masks: torch.Tensor,
    *,
    base_probs: torch.Tensor | None = None,
    **scoring: Any,
) -> torch.Tensor:
    """:func:`score_masks` for B x K x h x w binary masks with exact savings.

    Identical masks of one image are scored once and their probability shared; an all-ones
    mask (the unmasked image) takes ``base_probs[image]`` when given instead of a forward.
    The result is the same B x K matrix :func:`score_masks` returns (exactly, in fp32: the
    skipped forwards would have seen identical inputs).

    Args:
        adapter: The model.
        inputs: B x C x H x W preprocessed images.
        target: (B,) target classes, or a score function (see :func:`score_masks`).
        masks: B x K x h x w masks of zeros and ones.
        base_probs: (B,) target probability (or score) of each unmasked image, if already
            known.
        **scoring: Passed to :func:`score_masks` (options, perturb, upsample, or the separate
            forward keywords); ``perturb`` must depend on the mask only, not on the pair index.
    """
    b, k = masks.shape[:2]
    flat = masks.reshape(b * k, -1)
    image = torch.arange(b, device=masks.device).repeat_interleave(k)
    key = torch.cat([image.unsqueeze(1).to(flat.dtype), flat], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    owner = unique[:, 0].long()
    unique_masks = unique[:, 1:]
    probs = torch.empty(unique.shape[0], dtype=torch.float32, device=inputs.device)
    full = unique_masks.bool().all(dim=1).to(inputs.device)
    if base_probs is None:
        full = torch.zeros_like(full)
    else:
        probs[full] = base_probs.float().to(inputs.device)[owner.to(inputs.device)[full]]
    todo = (~full).nonzero().squeeze(1)
    if todo.numel():
        probs[todo] = score_masks(
            adapter,
            inputs,
            target,
            unique_masks[todo.to(unique_masks.device)].reshape(-1, *masks.shape[2:]),
            owner=owner[todo.to(owner.device)],
            **scoring,
        )
    return probs[inverse.to(inputs.device)].view(b, k)


def upsample_masks(
    masks: torch.Tensor, size: tuple[int, int], mode: str = "nearest"
) -> torch.Tensor:
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
    target: Target,
    masks: torch.Tensor,
    *,
    options: ForwardOptions | None = None,
    perturb: Perturb | None = None,
    upsample: str = "nearest",
    owner: torch.Tensor | None = None,
    token_masks: bool = False,
    batch_size: int | str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
) -> torch.Tensor:
    """Target-class probability of every masked copy of every image.

    Args:
        adapter: The model.
        inputs: B x C x H x W preprocessed images.
        target: (B,) target classes, or a :class:`~xvit._targets.TargetScore`: then each
            masked copy's score is that function of its float32 logits instead of a
            probability. It is called on chunks of masked copies of different images (one
            row each), so each row's score must depend on that row alone.
        masks: B x K x h x w (one set per image) or K x h x w (shared by all images, or, with
            ``owner``, one mask per entry of ``owner``); upsampled to H x W with ``upsample``
            mode when smaller.
        options: How the masked forwards run (:class:`~xvit._forward.ForwardOptions`):
            ``batch_size`` masked images per forward (or "auto"), ``precision`` "fp32" or
            "bf16" (bfloat16 autocast; probabilities are still computed in float32 from the
            logits), ``compile`` through ``torch.compile`` (chunks are then padded to one
            size so it compiles once). Default: ``ForwardOptions()``.
        perturb: How a mask is applied, ``(x, m, pair_index) -> x'`` on chunks; default
            ``x * m`` (masked-out pixels become 0, the normalised mean colour). ``pair_index``
            is the position of each pair in the flattened list: ``image * K + mask`` for
            B x K results, the mask's position in ``masks`` with ``owner``.
        upsample: Interpolation mode used to bring masks to the input size.
        owner: Optional (K,) image index of each mask of a K x h x w ``masks``: mask k is
            applied to image ``owner[k]`` only, so images may carry different numbers of masks.
        token_masks: The masks are binary masks on the patch grid (h x w = the grid) naming
            the patch tokens each copy keeps: the image itself runs through the model with
            its prefix tokens and those patch tokens only (:class:`~xvit.models.TokenSubset`;
            the adapter needs the ``"token_subset"`` capability). Every mask keeps the same
            number of tokens; ``perturb`` and ``upsample`` are not used.
        batch_size: Instead of ``options``: its ``batch_size``.
        precision: Instead of ``options``: its ``precision``.
        compile: Instead of ``options``: its ``compile``.

    Returns:
        B x K probabilities ``softmax(logits)[target]`` (or scores, float32); (K,) with
        ``owner``.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8).eval()
        >>> a = xvit.get_adapter(m)
        >>> x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
        >>> score_masks(a, x, t, torch.ones(5, 4, 4)).shape
        torch.Size([2, 5])
        >>> score_masks(a, x, t, torch.ones(3, 4, 4), owner=torch.tensor([0, 0, 1])).shape
        torch.Size([3])
    """
    b, c, h, w = inputs.shape
    masks = masks.to(inputs.device)
    if owner is not None:
        owner = _check_owner(owner, masks, b).to(inputs.device)
        k = total = int(masks.shape[0])
    else:
        if masks.dim() not in (3, 4):
            raise InvalidInputError(
                f"masks must be K x h x w or B x K x h x w, got shape {tuple(masks.shape)}"
            )
        shared = masks.dim() == 3
        k = int(masks.shape[0] if shared else masks.shape[1])
        if not shared and masks.shape[0] != b:
            raise InvalidInputError(
                f"got mask sets for {masks.shape[0]} images but {b} images; pass B x K x h x w "
                f"masks, K x h x w masks shared by all images, or an owner index"
            )
        total = b * k
    perturb = perturb or fill_perturb(0.0)
    opts = forward_options(options, batch_size=batch_size, precision=precision, compile=compile)
    chunk = opts.inputs_per_forward(adapter.device, c * h * w * inputs.element_size())
    out = torch.empty(total, dtype=torch.float32, device=inputs.device)
    forward = scoring_forward(adapter, opts, pad_to=chunk if opts.compile else None)
    subset = _token_subset(adapter, masks, (h, w)) if token_masks else None
    if not isinstance(target, torch.Tensor):
        target = TargetScore(target)
    # for a score function: which rows had finite logits, so that a NaN score is blamed on
    # the function or on the model correctly, with one check after the loop
    scored = isinstance(target, TargetScore)
    outputs_finite = torch.ones(total if scored else 0, dtype=torch.bool, device=inputs.device)
    with torch.inference_mode(), subset or nullcontext():
        patchwise = None
        # worth its capture pass of 2B images from 4 copies per image on; the 2B images'
        # kept tokens and q/k/v stay within about one chunk's activations when B <= chunk
        if subset is None and total >= 4 * b and b <= chunk:
            patchwise = _patch_tokens(adapter, inputs, masks, perturb, upsample, opts, forward)
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total), device=inputs.device)
            if owner is not None:
                img, m = owner[idx], masks[idx]
            else:
                img, mask_i = idx // k, idx % k
                m = masks[mask_i] if shared else masks[img, mask_i]
            if subset is not None:
                x = inputs[img]
                subset.keep(m.flatten(1).nonzero()[:, 1].view(len(idx), -1))
                logits = forward(x).float()
                subset.check_applied()
            elif patchwise is not None:
                with patchwise.copies(img, m.flatten(1).bool()):
                    logits = forward(inputs[:1].expand(len(idx), *inputs.shape[1:])).float()
            else:
                m = upsample_masks(m.to(inputs.dtype), (h, w), upsample).unsqueeze(1)
                logits = forward(perturb(inputs[img], m, idx)).float()
            rows = slice(start, start + len(idx))
            if isinstance(target, TargetScore):
                out[rows] = target(logits, check_finite=False)
                outputs_finite[rows] = torch.isfinite(logits).all(dim=1)
            else:
                out[rows] = masked_scores(logits, target[img])
            count_forwards(len(idx))
    if isinstance(target, TargetScore):
        target.check_finite(out, outputs_finite)
    check_finite_logits(out, "masked copies of the images")
    return out if owner is not None else out.view(b, k)


def _patch_tokens(
    adapter: ModelAdapter,
    inputs: torch.Tensor,
    masks: torch.Tensor,
    perturb: Perturb,
    upsample: str,
    opts: ForwardOptions,
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> PatchTokens | None:
    """The patch tokens of ``inputs`` and of their filled copies when every copy keeps or
    fills whole patches and the model allows it exactly (see the module docstring); None
    for the pixel path. Not under ``compile`` (its graph would hold the selections)."""
    if not isinstance(perturb, FillPerturb) or opts.compile or upsample != "nearest":
        return None
    if (
        isinstance(perturb.fill, torch.Tensor)
        and perturb.fill.dim() == 4
        and perturb.fill.shape[0] != 1
    ):
        return None  # a fill per image: not the same for every copy of a chunk
    h, w = int(inputs.shape[-2]), int(inputs.shape[-1])
    geo = adapter.geometry
    grid = geo.grid(h, w)
    if tuple(masks.shape[-2:]) != grid or (
        grid[0] * geo.patch_size[0],
        grid[1] * geo.patch_size[1],
    ) != (h, w):
        return None
    if not bool(((masks == 0) | (masks == 1)).all()):
        return None
    parts = patch_token_parts(adapter)
    if parts is None:
        return None
    index = torch.arange(len(inputs), device=inputs.device)
    ones = inputs.new_ones(len(inputs), 1, h, w)
    clean, filled = perturb(inputs, ones, index), perturb(inputs, torch.zeros_like(ones), index)
    tokens = PatchTokens(parts, clean, filled, forward, grid)
    return tokens if tokens.exact_layout else None


def _token_subset(adapter: ModelAdapter, masks: torch.Tensor, size: tuple[int, int]) -> TokenSubset:
    """The :class:`TokenSubset` of token masks, once they are checked: on the patch grid,
    binary, every one keeping the same number of patch tokens."""
    grid = adapter.geometry.grid(*size)
    if tuple(masks.shape[-2:]) != grid:
        raise InvalidInputError(
            f"token masks must be on the patch grid {grid[0]} x {grid[1]}, got masks of "
            f"{masks.shape[-2]} x {masks.shape[-1]}"
        )
    flat = masks.reshape(-1, grid[0] * grid[1])
    if not ((flat == 0) | (flat == 1)).all():
        raise InvalidInputError("token masks must hold 0 (token dropped) and 1 (kept) only")
    counts = flat.sum(dim=1)
    if flat.shape[0] and not (counts == counts[0]).all():
        raise InvalidInputError(
            f"every token mask must keep the same number of patch tokens, got between "
            f"{int(counts.min())} and {int(counts.max())}"
        )
    return TokenSubset(adapter)


def _check_owner(owner: torch.Tensor, masks: torch.Tensor, num_images: int) -> torch.Tensor:
    if masks.dim() != 3:
        raise InvalidInputError(
            f"with an owner index, masks must be K x h x w (one mask per owner entry), got "
            f"shape {tuple(masks.shape)}"
        )
    if owner.dim() != 1 or owner.shape[0] != masks.shape[0]:
        raise InvalidInputError(
            f"owner must be a (K,) index with one image per mask: got shape "
            f"{tuple(owner.shape)} for {masks.shape[0]} masks"
        )
    if owner.is_floating_point() or owner.dtype == torch.bool:
        raise InvalidInputError(f"owner must hold integer image indices, got {owner.dtype}")
    if owner.numel() and not (int(owner.min()) >= 0 and int(owner.max()) < num_images):
        raise InvalidInputError(
            f"owner indices must lie in 0 .. {num_images - 1} (the batch has {num_images} "
            f"images), got {int(owner.min())} .. {int(owner.max())}"
        )
    return owner.long()


def sum_weighted_masks(
    adapter: ModelAdapter,
    inputs: torch.Tensor,
    target: Target,
    chunks: Iterable[torch.Tensor],
    *,
    options: ForwardOptions | None = None,
    perturb: Perturb | None = None,
    upsample: str = "nearest",
    batch_size: int | str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
) -> tuple[torch.Tensor, int]:
    """``sum_k p_k * m_k`` over a stream of mask chunks shared by all images.

    Each chunk (K_c x h x w, the same h x w throughout) is scored with :func:`score_masks`
    and folded into a running sum before the next chunk is made, so only one chunk of masks
    is alive at a time. ``pair_index`` given to ``perturb`` is local to the chunk.

    Args:
        adapter: The model.
        inputs: B x C x H x W preprocessed images.
        target: (B,) target classes, or a score function (see :func:`score_masks`).
        chunks: An iterable of K_c x h x w masks (e.g. a generator making them on demand).
        options: How the masked forwards run, as in :func:`score_masks`.
        perturb: How a mask is applied, as in :func:`score_masks`.
        upsample: Interpolation mode used to bring masks to the input size.
        batch_size: Instead of ``options``: its ``batch_size``.
        precision: Instead of ``options``: its ``precision``.
        compile: Instead of ``options``: its ``compile``.

    Returns:
        The B x h x w float32 sum of every mask weighted by each image's target probability
        (or score) on its masked copy, and the number of masks seen.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8).eval()
        >>> a = xvit.get_adapter(m)
        >>> chunks = (torch.ones(4, 32, 32) for _ in range(3))
        >>> total, n = sum_weighted_masks(a, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                               chunks)
        >>> total.shape, n
        (torch.Size([2, 32, 32]), 12)
    """
    opts = forward_options(options, batch_size=batch_size, precision=precision, compile=compile)
    total: torch.Tensor | None = None
    count = 0
    for chunk in chunks:
        if chunk.dim() != 3:
            raise InvalidInputError(
                f"each mask chunk must be K x h x w, got shape {tuple(chunk.shape)}"
            )
        chunk = chunk.to(device=inputs.device, dtype=torch.float32)
        probs = score_masks(
            adapter,
            inputs,
            target,
            chunk,
            options=opts,
            perturb=perturb,
            upsample=upsample,
        )
        part = torch.einsum("bk,khw->bhw", probs, chunk)
        total = part if total is None else total + part
        count += int(chunk.shape[0])
    if total is None:
        raise InvalidInputError("no masks were given: the mask stream was empty")
    return total, count
