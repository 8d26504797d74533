"""RISE: randomized input sampling, scored in chunks on the shared mask kernel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from .._constraints import Integer, Real, Spec
from .._forward import TakesForwardOptions
from .._seeds import SEED, generator, resolve_seed
from .._targets import Target
from ..models._base import Geometry, ModelAdapter
from ._base import Cost, Explainer
from ._registration import register_method
from ._scoring import fill_perturb, sum_weighted_masks


def bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """out_size x in_size matrix of 1-D bilinear upsampling with mirrored borders.

    Row y samples the input at ``(y + 0.5) * in_size / out_size - 0.5`` (pixel centres, the
    ``align_corners=False`` convention) and reads outside samples from the mirror image about
    the edge pixels (index -1 is index 1). This is what ``skimage.transform.resize(order=1,
    mode="reflect")``, used by the RISE authors, does.
    """
    pos = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5
    lo = torch.floor(pos)
    frac = pos - lo
    lo = lo.long()
    hi = lo + 1
    last = in_size - 1

    def mirror(i: torch.Tensor) -> torch.Tensor:
        i = torch.where(i < 0, -i, i)
        i = torch.where(i > last, 2 * last - i, i)
        return i.clamp(0, last)

    mat = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    mat.index_put_((rows, mirror(lo)), 1 - frac, accumulate=True)
    mat.index_put_((rows, mirror(hi)), frac, accumulate=True)
    return mat


@register_method
class RISE(TakesForwardOptions, Explainer):
    """RISE (Petsiuk, Das, Saenko, BMVC 2018): randomized input sampling for explanation.

    N binary grids of s x s cells are drawn, each cell kept with probability p. Each grid is
    upsampled bilinearly to (s + 1) x cell pixels per side (cell = ceil(H / s), and likewise
    for the width) and cropped to H x W at a random shift in [0, cell), as the authors' code
    does, giving a soft mask m_i. The mask multiplies the preprocessed image (masked-out
    pixels take ``fill``, by default 0, the normalised mean colour) and the saliency is
    ``S = sum_i P(target | x * m_i) * m_i / (N * p)``, at input resolution (B x H x W).

    Defaults: N = ``num_masks`` = 4000, s = ``grid_size`` = 8, p = ``keep_prob`` = 0.5, as in
    the paper's ImageNet experiments. The masks are shared by every image of a batch and drawn
    from ``seed`` alone, so a map does not depend on the batch it was computed in, on the
    device, or on ``batch_size``. Only the s x s grids (N x s x s numbers) are kept; the
    full-size masks are made and scored one chunk of ``batch_size`` at a time. The masks are
    drawn from one generator seeded with the seed (see :mod:`xvit._seeds`).

    With a score function as the target (see :func:`xvit.explain`), each masked copy is
    weighted by its score instead of ``P(target | x * m_i)``.

    Args:
        num_masks: N, the number of random masks.
        grid_size: s, cells per side of each random grid.
        keep_prob: p, the probability that a cell is kept (in (0, 1]).
        seed: Seed of the mask draw (default 0); None draws from torch's global generator.
        fill: Value of masked-out pixels in the model's input space.
        batch_size: Model inputs (masked images) per forward, an int or "auto".
        precision: "fp32", or "bf16" for bfloat16 autocast in the masked forwards.
        compile: Run the masked forwards through ``torch.compile``.

    References:
        V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation of
        Black-box Models", BMVC 2018.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> e = xvit.explain("rise", m, torch.randn(1, 3, 32, 32), num_masks=32, seed=1)
        >>> e.map.shape
        torch.Size([1, 32, 32])
    """

    name = "rise"
    summary = "random binary grids, upsampled and shifted, weighted by the target probability"
    paper = "Petsiuk et al., RISE: Randomized Input Sampling for Explanation, BMVC 2018"
    family = "perturbation"
    score_targets = True
    randomized = True
    quick_params: ClassVar[dict[str, Any]] = {"num_masks": 32}
    # the default 4000 masks alone would take longer than the rest of the demo
    demo_params: ClassVar[dict[str, Any]] = {"num_masks": 250}
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "num_masks": Integer(low=1),
        "grid_size": Integer(low=1),
        "keep_prob": Real(0, 1, low_open=True),
        "seed": SEED,
        "fill": Real(),
    }

    def __init__(
        self,
        *,
        num_masks: int = 4000,
        grid_size: int = 8,
        keep_prob: float = 0.5,
        seed: int | None = 0,
        fill: float = 0.0,
        batch_size: int | str = 64,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        self.num_masks = num_masks
        self.grid_size = grid_size
        self.keep_prob = keep_prob
        self.seed = seed
        self.fill = fill
        self.batch_size = batch_size
        self.precision = precision
        self.compile = compile

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """One masked forward per mask: ``num_masks`` forwards per image."""
        return Cost(forwards=self.num_masks)

    # --- masks ----------------------------------------------------------------------------
    def cell_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Pixels per grid cell, (ceil(H / s), ceil(W / s))."""
        s = self.grid_size
        return -(-size[0] // s), -(-size[1] // s)

    def draw(
        self, size: tuple[int, int], seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The random part of the masks: N x s x s binary grids and N x 2 (row, column) shifts.

        Drawn on the CPU from ``seed`` (default: this method's seed), so they are the same on
        every device.
        """
        gen = generator(resolve_seed(self.seed if seed is None else seed))
        n, s = self.num_masks, self.grid_size
        grids = (torch.rand(n, s, s, generator=gen) < self.keep_prob).float()
        ch, cw = self.cell_size(size)
        shifts = torch.stack(
            [
                torch.randint(0, ch, (n,), generator=gen),
                torch.randint(0, cw, (n,), generator=gen),
            ],
            dim=1,
        )
        return grids, shifts

    def masks_from(
        self, grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Upsample K x s x s grids to (s + 1) cells per side and crop H x W at the shifts."""
        s = self.grid_size
        ch, cw = self.cell_size(size)
        h, w = size
        device = grids.device
        rows = bilinear_matrix((s + 1) * ch, s).to(device=device, dtype=torch.float32)
        cols = bilinear_matrix((s + 1) * cw, s).to(device=device, dtype=torch.float32)
        shifts = shifts.to(device)
        row_idx = shifts[:, :1] + torch.arange(h, device=device)  # K x H
        col_idx = shifts[:, 1:] + torch.arange(w, device=device)  # K x W
        return torch.einsum("khs,kst,kwt->khw", rows[row_idx], grids.float(), cols[col_idx])

    def masks(
        self, size: tuple[int, int], device: torch.device | str = "cpu", seed: int | None = None
    ) -> torch.Tensor:
        """All N masks, N x H x W (for inspection and tests; :meth:`compute` streams them)."""
        grids, shifts = self.draw(size, seed)
        return self.masks_from(grids.to(device), shifts, size)

    def _chunks(
        self, grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int], chunk: int
    ) -> Iterator[torch.Tensor]:
        for start in range(0, grids.shape[0], chunk):
            yield self.masks_from(grids[start : start + chunk], shifts[start : start + chunk], size)

    # --- explanation ----------------------------------------------------------------------
    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        grids, shifts = self.draw(size)
        grids, shifts = grids.to(inputs.device), shifts.to(inputs.device)
        options = self.forward_options
        per_item = inputs[0].numel() * inputs.element_size()
        chunk = options.inputs_per_forward(adapter.device, per_item)
        total, count = sum_weighted_masks(
            adapter,
            inputs,
            target,
            self._chunks(grids, shifts, size, chunk),
            options=options,
            perturb=fill_perturb(self.fill),
        )
        return (total / (count * self.keep_prob)).to(inputs.dtype)
