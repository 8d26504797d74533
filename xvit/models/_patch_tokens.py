"""Masked copies of an image scored from its patch tokens instead of its pixels.

A copy made with a binary mask on the patch grid (each patch wholly kept or wholly filled)
has, at the patch embedding, exactly the tokens of the image where the mask keeps a patch
and those of the filled image (every pixel replaced) where it does not: the embedding reads
each patch's pixels alone. Every step after it up to the first block acts on each token
separately (positions added, prefix tokens prepended, per-token norms), and in a pre-norm
block so do the first norm and the q/k/v projections. So for a batch of such copies
:class:`PatchTokens` computes the patch tokens and block-0 q/k/v of each image and of its
filled copy once, and each copy's forward takes them by selection (one gather) in place
of the patch embedding, upsampling, pixel product, first norm and q/k/v projections. The
rest of the model's own forward runs unchanged; the logits equal those of the pixel copies
(the same numbers go through the same operations).

Families declare the module (``Family.patch_embed``: the ``"patch_tokens"`` capability).
The path is taken only where it is exact and leaves nothing behind: eval mode, no hooks or
replaced ``forward`` on the modules it stands in for, replacements removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .._errors import UnsupportedModelError
from ._base import PATCH_TOKENS, ModelAdapter
from ._guard import has_hooks
from ._prenorm import PRENORM


class _Captured(BaseException):
    """Ends the capture forward once every module of interest has run (a BaseException, so
    that the adapter's error translation lets it through)."""


@dataclass(frozen=True)
class PatchTokenParts:
    """The modules a copy's forward takes its values from selections for.

    Attributes:
        patch: The patch embedding.
        prefix_tokens: Tokens before the patches in the first block.
        width: The token width D (the patch embedding's channels).
        norm1: Block 0's first norm (skipped: only the projections read it), or None.
        qkv: Block 0's q/k/v projection modules (one fused or three), or () where the
            blocks are not declared pre-norm.
    """

    patch: nn.Module
    prefix_tokens: int
    width: int
    norm1: nn.Module | None = None
    qkv: tuple[nn.Module, ...] = ()

    def modules(self) -> list[nn.Module]:
        return [self.patch, *([self.norm1] if self.norm1 is not None else []), *self.qkv]


def patch_token_parts(adapter: ModelAdapter) -> PatchTokenParts | None:
    """The parts of ``adapter``'s model for :class:`PatchTokens`, or None where the path
    would not be exact or would skip somebody's hook (no ``"patch_tokens"`` capability,
    training mode, hooks or a replaced ``forward`` on those modules)."""
    if PATCH_TOKENS not in adapter.capabilities or adapter.model.training:
        return None
    block = adapter.blocks()[0]
    norm1: nn.Module | None = None
    qkv: tuple[nn.Module, ...] = ()
    if PRENORM in adapter.capabilities and block.qkv.weight is None:
        try:
            first = adapter.prenorm_parts().blocks[0]
        except UnsupportedModelError:  # a block of another shape: the embedding part only
            first = None
        if first is not None and first.norm1 is block.norm1:
            norm1, qkv = block.norm1, tuple(block.qkv.modules)
    try:
        patch = adapter.patch_embedding()
    except UnsupportedModelError:
        return None
    if not reads_each_patch_alone(patch):
        return None
    geo = adapter.geometry
    parts = PatchTokenParts(patch, int(geo.num_prefix_tokens), int(geo.hidden_size), norm1, qkv)
    return None if has_hooks(parts.modules()) else parts


#: Modules that act on each position (or token) separately.
_PER_TOKEN = (nn.LayerNorm, nn.Identity, nn.Flatten, nn.Dropout)


def reads_each_patch_alone(module: nn.Module) -> bool:
    """Whether ``module`` is made of one non-overlapping convolution (stride = kernel, no
    padding or dilation) and per-token parts only: then each output token depends on its own
    patch's pixels alone (a hybrid CNN stem, for one, does not).

    Example:
        >>> reads_each_patch_alone(nn.Conv2d(3, 8, kernel_size=4, stride=4))
        True
        >>> reads_each_patch_alone(nn.Conv2d(3, 8, kernel_size=4, stride=2))
        False
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    others = [m for m in module.modules() if not isinstance(m, (nn.Conv2d, *_PER_TOKEN))]
    if len(convs) != 1 or any(list(m.children()) == [] for m in others):
        return False
    conv = convs[0]
    return (
        tuple(conv.kernel_size) == tuple(conv.stride)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding in ((0, 0), 0, "valid")
    )


class PatchTokens:
    """The patch tokens (and block-0 q/k/v) of B images and of their filled copies, for
    scoring masked copies by selection (see the module docstring).

    Args:
        parts: From :func:`patch_token_parts`.
        clean: B x C x H x W, the images as the copies keep them.
        filled: B x C x H x W, the images with every pixel filled.
        run: The forward the copies go through (its precision, e.g. autocast, applies to
            the values kept here too); run once on the 2B images, stopped after block 0's
            projections.
        grid: The patch grid (h, w).
    """

    def __init__(
        self,
        parts: PatchTokenParts,
        clean: torch.Tensor,
        filled: torch.Tensor,
        run: Callable[[torch.Tensor], torch.Tensor],
        grid: tuple[int, int],
    ) -> None:
        self.parts = parts
        self.grid = grid
        wanted = [parts.patch, *parts.qkv]
        seen: dict[int, torch.Tensor] = {}

        def keeper(i: int) -> Callable[..., None]:
            def hook(_module: nn.Module, _args: object, out: torch.Tensor) -> None:
                seen[i] = out
                if len(seen) == len(wanted):
                    raise _Captured

            return hook

        handles = [m.register_forward_hook(keeper(i)) for i, m in enumerate(wanted)]
        try:
            run(torch.cat([clean, filled]))
        except _Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if len(seen) != len(wanted):
            raise UnsupportedModelError(
                "the patch embedding or block 0's projections did not run in the forward"
            )
        b = len(clean)
        self._images = b
        tensors = all(isinstance(seen[i], torch.Tensor) for i in range(len(wanted)))
        self._layout = _patch_layout(seen[0].shape, grid, parts.width) if tensors else None
        # each kept as 2B x T x C rows (images, then filled copies), so that a copy's values
        # are one gather: row (owner + B * filled) of every token
        self._rows: list[torch.Tensor] = []
        if self._layout is not None:
            self._rows = [_as_rows(seen[0], self._layout)]
            self._rows += [seen[i].contiguous() for i in range(1, len(wanted))]

    @property
    def exact_layout(self) -> bool:
        """Whether the patch embedding's output is one tensor of a known layout (B x P x D,
        B x h x w x D or B x D x h x w); callers fall back to pixels when not."""
        return self._layout is not None

    @contextmanager
    def copies(self, owner: torch.Tensor, keep: torch.Tensor) -> Iterator[None]:
        """Inside the block, a forward of ``len(owner)`` inputs (any values of the right
        shape) computes the copies of images ``owner`` keeping patches ``keep`` (n x P,
        bool)."""
        layout = self._layout
        assert layout is not None, "check exact_layout first"
        prefix = keep.new_ones(len(owner), self.parts.prefix_tokens)
        patch = _from_rows(_take(self._rows[0], self._gather_index(owner, keep)), layout, self.grid)
        every_token = self._gather_index(owner, torch.cat([prefix, keep], dim=1))
        projections = [_take(r, every_token) for r in self._rows[1:]]
        stand_ins: list[tuple[nn.Module, Callable[..., torch.Tensor]]] = [
            (self.parts.patch, _returning(patch))
        ]
        if self.parts.norm1 is not None:
            stand_ins.append((self.parts.norm1, _identity))
        stand_ins += [(m, _returning(out)) for m, out in zip(self.parts.qkv, projections)]
        try:
            for module, forward in stand_ins:
                module.forward = forward  # type: ignore[method-assign]
            yield
        finally:
            for module, _ in stand_ins:
                vars(module).pop("forward", None)

    def _gather_index(self, owner: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """n x T row indices into the 2B x T rows: token t of copy i from image ``owner[i]``
        where ``keep[i, t]``, else from its filled copy."""
        tokens = keep.shape[1]
        source = owner.unsqueeze(1) + self._images * (~keep).long()
        return source * tokens + torch.arange(tokens, device=keep.device)


def _take(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The n x T x C values of ``rows`` (2B x T x C) at an n x T :meth:`_gather_index`."""
    flat = rows.reshape(-1, rows.shape[-1])
    return flat.index_select(0, index.flatten()).view(*index.shape, rows.shape[-1])


def _returning(value: torch.Tensor) -> Callable[..., torch.Tensor]:
    def forward(*_args: object, **_kwargs: object) -> torch.Tensor:
        return value

    return forward


def _identity(x: torch.Tensor, *_args: object, **_kwargs: object) -> torch.Tensor:
    return x


def _patch_layout(shape: torch.Size, grid: tuple[int, int], width: int) -> str | None:
    """Which of B x P x D, B x h x w x D, B x D x h x w ``shape`` is (D = ``width``)."""
    h, w = grid
    if tuple(shape[1:]) == (h * w, width):
        return "tokens"
    if tuple(shape[1:]) == (h, w, width):
        return "nhwc"
    if tuple(shape[1:]) == (width, h, w):
        return "nchw"
    return None


def _as_rows(out: torch.Tensor, layout: str) -> torch.Tensor:
    """The patch embedding's output as B x P x C rows."""
    if layout == "nchw":
        return out.flatten(2).transpose(1, 2).contiguous()
    return out.reshape(out.shape[0], -1, out.shape[-1]).contiguous()


def _from_rows(rows: torch.Tensor, layout: str, grid: tuple[int, int]) -> torch.Tensor:
    """n x P x C rows back in the patch embedding's layout."""
    if layout == "tokens":
        return rows
    if layout == "nhwc":
        return rows.view(len(rows), *grid, rows.shape[-1])
    return rows.transpose(1, 2).reshape(len(rows), rows.shape[-1], *grid)
