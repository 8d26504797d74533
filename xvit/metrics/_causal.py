"""The engine shared by Insertion and Deletion (Petsiuk et al., RISE, BMVC 2018).

Pixels are ranked by saliency (at input resolution). Step ``i`` of the game has revealed
(insertion) or removed (deletion) the ``counts[i]`` highest-ranked pixels; its score is the
model's softmax probability of the target class. The curve has one point per step, both ends
included (0 and all pixels), and the score is its area by the trapezoidal rule over the
fraction of pixels in [0, 1].

Ties in the ranking are broken deterministically: pixels of equal saliency keep raster order
(row-major: top row first, left to right), via a stable descending sort. A constant map
therefore reveals the image row by row from the top.

All steps of all images of a batch are scored together: the (image, step) pairs are flattened
and forwarded in chunks of ``batch_size``, building each chunk's masks on the fly from the
pixel ranks, like :func:`xvit.methods.score_masks` does for explanation masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, ClassVar

import torch

from .._errors import ModelOutputError, ParameterError
from .._inputs import resolve_targets
from ..explanation import Explanation
from ..methods._base import check_batch_size
from ..methods._scoring import resolve_batch_size
from ..models import get_adapter, model_lock, preserved_state
from ..models._base import ModelAdapter
from ._base import (
    UPSAMPLE_MODES,
    Boxes,
    Metric,
    MetricResult,
    check_batch,
    check_choice,
    check_seeds,
    saliency_at,
)
from ._substrates import SUBSTRATES, check_preprocessing, make_substrate

#: The percentages of pixels at which the GradMask authors evaluate (with 0 added).
GRADMASK_FRACTIONS = (0.0, 0.01, 0.05, *(k / 10 for k in range(1, 11)))
PROTOCOLS = ("rise", "gradmask")
#: Gaussian blur (kernel size, sigma) per protocol: RISE's evaluation code and the authors'.
BLUR = {"rise": (11, 5.0), "gradmask": (15, 7.0)}


def pixel_ranks(saliency: torch.Tensor) -> torch.Tensor:
    """B x (H*W) rank of every pixel, 0 for the most salient; ties keep raster order."""
    flat = saliency.reshape(saliency.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks


def step_counts(num_pixels: int, step: int) -> torch.Tensor:
    """Pixels changed after each step: 0, step, 2 step, ..., all (the last step may be short)."""
    n_steps = math.ceil(num_pixels / step)
    return torch.tensor([min(i * step, num_pixels) for i in range(n_steps + 1)])


def fraction_counts(num_pixels: int, fractions: Sequence[float]) -> torch.Tensor:
    """Pixels changed at each fraction (rounded to the nearest pixel)."""
    return torch.tensor([round(f * num_pixels) for f in fractions])


def causal_curves(
    adapter: ModelAdapter,
    x: torch.Tensor,
    target: torch.Tensor,
    saliency: torch.Tensor,
    substrate: torch.Tensor,
    counts: torch.Tensor,
    *,
    insertion: bool,
    batch_size: int,
) -> torch.Tensor:
    """B x S target probabilities along the insertion or deletion game.

    Args:
        adapter: The model.
        x: B x C x H x W preprocessed images.
        target: (B,) classes.
        saliency: B x H x W maps at input resolution.
        substrate: B x C x H x W replacement values.
        counts: (S,) number of top-ranked pixels changed at each step.
        insertion: True: start from the substrate and reveal the image; False: start from
            the image and replace it by the substrate.
        batch_size: Perturbed images per forward.
    """
    b, _c, h, w = x.shape
    ranks = pixel_ranks(saliency).to(x.device)
    counts = counts.to(x.device)
    s = counts.numel()
    total = b * s
    out = torch.empty(total, dtype=torch.float32, device=x.device)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            idx = torch.arange(start, min(start + batch_size, total), device=x.device)
            img, step = idx // s, idx % s
            changed = (ranks[img] < counts[step].unsqueeze(1)).view(-1, 1, h, w)
            if insertion:
                batch = torch.where(changed, x[img], substrate[img])
            else:
                batch = torch.where(changed, substrate[img], x[img])
            probs = adapter.logits(batch, check_finite=False).float().softmax(dim=-1)
            out[start : start + len(idx)] = probs.gather(1, target[img].unsqueeze(1)).squeeze(1)
    return out.view(b, s)


class CausalMetric(Metric):
    """Insertion or Deletion AUC; subclasses set ``insertion`` and the default substrate.

    Args:
        protocol: ``"rise"`` (default): steps of ``step`` pixels, RISE's blur (kernel 11,
            sigma 5). ``"gradmask"``: the authors' evaluation, points at 0, 1, 5, 10, 20, ...,
            100 % of the pixels, blur kernel 15 and sigma 7, and ``"black"`` meaning what the
            authors call black, 0 in normalised space (``"zero"``).
        substrate: ``"blur"``, ``"zero"``, ``"black"``, ``"mean"`` or ``"random"`` (see
            :mod:`xvit.metrics._substrates`); None for the metric's default.
        step: Pixels changed per step (None: one image row, the input width, as RISE).
        fractions: Explicit curve points as fractions of the pixels, increasing from 0 to 1
            (overrides ``step``; the gradmask protocol sets them).
        blur_kernel: Odd Gaussian kernel size for ``"blur"`` (None: the protocol's).
        blur_sigma: Gaussian sigma for ``"blur"`` (None: the protocol's).
        upsample: How maps reach input resolution: ``"nearest"`` (default, as the
            reference), ``"bilinear"`` or ``"bicubic"``.
        batch_size: Perturbed images per forward (an int, or "auto").
        seed: Base seed of the ``"random"`` substrate when no per-image seeds are passed
            (image ``i`` of the batch then uses ``seed + i``).
    """

    insertion: ClassVar[bool] = True
    default_substrate: ClassVar[str] = "blur"
    needs_model = True

    def __init__(
        self,
        *,
        protocol: str = "rise",
        substrate: str | None = None,
        step: int | None = None,
        fractions: Sequence[float] | None = None,
        blur_kernel: int | None = None,
        blur_sigma: float | None = None,
        upsample: str = "nearest",
        batch_size: int | str = 64,
        seed: int = 0,
    ) -> None:
        self.protocol = check_choice("protocol", protocol, PROTOCOLS, self.name)
        if substrate is None:
            substrate = self.default_substrate
        substrate = check_choice("substrate", substrate, SUBSTRATES, self.name)
        if self.protocol == "gradmask" and substrate == "black":
            substrate = "zero"
        self.substrate = substrate
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step <= 0):
            raise ParameterError(f"{self.name}: step must be a positive integer, got {step!r}")
        if step is not None and fractions is not None:
            raise ParameterError(f"{self.name}: give step or fractions, not both")
        if fractions is None and self.protocol == "gradmask" and step is None:
            fractions = GRADMASK_FRACTIONS
        self.step = step
        self.fractions = None if fractions is None else self._check_fractions(fractions)
        kernel, sigma = BLUR[self.protocol]
        blur_kernel = kernel if blur_kernel is None else blur_kernel
        blur_sigma = sigma if blur_sigma is None else blur_sigma
        if (
            isinstance(blur_kernel, bool)
            or not isinstance(blur_kernel, int)
            or blur_kernel < 1
            or (blur_kernel % 2 == 0)
        ):
            raise ParameterError(
                f"{self.name}: blur_kernel must be an odd positive integer, got {blur_kernel!r}"
            )
        if (
            isinstance(blur_sigma, bool)
            or not isinstance(blur_sigma, (int, float))
            or not (blur_sigma > 0 and math.isfinite(blur_sigma))
        ):
            raise ParameterError(
                f"{self.name}: blur_sigma must be a positive number, got {blur_sigma!r}"
            )
        self.blur_kernel = blur_kernel
        self.blur_sigma = float(blur_sigma)
        self.upsample = check_choice("upsample", upsample, UPSAMPLE_MODES, self.name)
        self.batch_size = check_batch_size(batch_size, self.name)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParameterError(f"{self.name}: seed must be an integer, got {seed!r}")
        self.seed = seed

    def _check_fractions(self, fractions: Sequence[float]) -> tuple[float, ...]:
        try:
            values = tuple(float(f) for f in fractions)
        except (TypeError, ValueError):
            raise ParameterError(
                f"{self.name}: fractions must be numbers in [0, 1], got {fractions!r}"
            ) from None
        if (
            len(values) < 2
            or values[0] != 0.0
            or values[-1] != 1.0
            or any(b <= a for a, b in pairwise(values))
        ):
            raise ParameterError(
                f"{self.name}: fractions must increase strictly from 0 to 1 with both ends "
                f"included, e.g. (0, 0.1, 0.5, 1), got {fractions!r}"
            )
        return values

    def counts(self, height: int, width: int) -> torch.Tensor:
        """(S,) pixels changed at each curve point for an input of this size."""
        n = height * width
        if self.fractions is not None:
            return fraction_counts(n, self.fractions)
        return step_counts(n, self.step or width)

    def __call__(
        self,
        model: Any,
        x_batch: torch.Tensor,
        y_batch: Any,
        a_batch: torch.Tensor | Explanation,
        s_batch: Boxes | None = None,
        *,
        seeds: Sequence[int] | None = None,
    ) -> MetricResult:
        adapter = get_adapter(model)
        check_batch(x_batch, a_batch)
        adapter.check_input(x_batch)
        x = x_batch.detach().to(device=adapter.device, dtype=adapter.dtype)
        b, c, h, w = x.shape
        image_seeds = check_seeds(seeds, b, self.seed)
        prep = adapter.preprocessing
        if self.substrate in ("black", "random"):
            check_preprocessing(prep, c)
        saliency = saliency_at(a_batch, (h, w), self.upsample).to(x.device)
        counts = self.counts(h, w)
        chunk = resolve_batch_size(self.batch_size, adapter, c * h * w * x.element_size())
        with model_lock(adapter.model), preserved_state(adapter.model):
            if y_batch is None:
                with torch.inference_mode():
                    logits = adapter.logits(x, check_finite=False)
            else:
                logits = torch.empty(b, adapter.num_classes, device=x.device)
            target = resolve_targets(y_batch, logits, adapter.num_classes).to(x.device)
            substrate = make_substrate(
                self.substrate,
                x,
                prep,
                blur_kernel=self.blur_kernel,
                blur_sigma=self.blur_sigma,
                seeds=image_seeds,
            )
            curves = causal_curves(
                adapter,
                x,
                target,
                saliency,
                substrate,
                counts,
                insertion=self.insertion,
                batch_size=chunk,
            )
        if not torch.isfinite(curves).all():
            raise ModelOutputError(
                f"{self.name}: the model returned NaN or infinite logits on perturbed inputs; "
                f"check the model and the input"
            )
        fractions = counts.double() / (h * w)
        curves64 = curves.double().cpu()
        scores = torch.trapezoid(curves64, fractions, dim=1)
        return MetricResult(self.name, scores, curves64, fractions)
