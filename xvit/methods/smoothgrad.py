"""SmoothGrad: input gradients averaged over noisy copies of the image, pooled to the patch
grid."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from .._constraints import Flag, Integer, Real, Spec
from .._forward import FORWARD_CONSTRAINTS
from .._seeds import SEED, content_seed, generator, resolve_seed
from .._targets import Target
from ..models._base import Geometry, ModelAdapter
from ._base import Cost, Explainer
from ._pixels import POOLING, chunked_input_gradients, inputs_per_pass, pool_to_patches
from ._registration import register_method


@register_method
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov, Thorat, Kim, Viegas, Wattenberg, 2017), pooled to the patch grid.

    Each image x gets ``n_samples`` noisy copies ``x + e_k``, with every value of ``e_k``
    drawn from N(0, sigma^2) and ``sigma = noise_level * (max(x) - min(x))`` (the image's
    range over all its pixels and channels, in the model's input space). The pixel
    attribution is the mean over the copies of the gradient of the target logit at the copy,
    ``mean_k grad F(x + e_k)``; with ``times_input`` of gradient times input,
    ``mean_k (x + e_k) * grad F(x + e_k)`` (SmoothGrad applied to Gradient * Input); with
    ``squared`` the mean of the squares instead (SmoothGrad-Squared, Hooker et al. 2019).
    The C x H x W attribution is pooled to the patch grid: summed over channels and over each
    patch's pixels, in absolute value (default) or signed.

    Defaults and why: ``n_samples=50`` and ``noise_level=0.15`` are the paper's (it finds
    10 to 20 % of the range best; the authors' ``saliency`` library defaults to 25 samples of
    SmoothGrad-Squared). ``pooling="abs"``: the paper shows the absolute value of the
    smoothed gradient summed over channels (the authors' ``VisualizeImageGrayscale``); the
    sign of a raw gradient says in which direction a pixel would change the score, not
    whether it supports it. ``"signed"`` keeps the sign.

    The noise of each image is drawn on the CPU from a generator seeded with ``seed`` and a
    hash of the image's values (:func:`xvit._seeds.content_seed`), so a map does not depend
    on the batch the image is in, nor on the device or ``batch_size``. The copies of all
    images go through the model ``batch_size`` at a time. With a score function as the
    target (see :func:`xvit.explain`), F is that score instead of the target logit.

    Args:
        n_samples: Noisy copies per image (gradients per image).
        noise_level: sigma as a fraction of the image's value range (> 0).
        squared: Average the squared gradients (SmoothGrad-Squared).
        times_input: Average gradient times (noisy) input instead of the gradient.
        pooling: "abs" (default) or "signed" (see above).
        seed: Seed of the noise (default 0); None draws one from torch's global generator
            per call.
        batch_size: Model inputs (noisy copies) per gradient pass, an int or "auto".

    References:
        D. Smilkov, N. Thorat, B. Kim, F. Viegas, M. Wattenberg, "SmoothGrad: removing noise
        by adding noise", ICML 2017 Workshop on Visualization for Deep Learning.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> a = xvit.explain("smoothgrad", m, x, n_samples=4, seed=1).map
        >>> b = xvit.explain("smoothgrad", m, x[1:], n_samples=4, seed=1).map
        >>> a.shape, bool(torch.allclose(a[1], b[0]))
        (torch.Size([2, 4, 4]), True)
    """

    name = "smoothgrad"
    summary = "input gradients averaged over noisy copies of the image, summed per patch"
    paper = "Smilkov et al., SmoothGrad: removing noise by adding noise, ICML 2017 workshop"
    family = "gradient"
    needs_gradients = True
    score_targets = True
    randomized = True
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 4}
    # 50 gradient passes per image would take about a minute for the demo's 200 digits on
    # two cores; 8 take about 6 s
    demo_params: ClassVar[dict[str, Any]] = {"n_samples": 8}
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "n_samples": Integer(low=1),
        "noise_level": Real(low=0, low_open=True),
        "squared": Flag(),
        "times_input": Flag(),
        "pooling": POOLING,
        "seed": SEED,
        "batch_size": FORWARD_CONSTRAINTS["batch_size"],
    }

    def __init__(
        self,
        *,
        n_samples: int = 50,
        noise_level: float = 0.15,
        squared: bool = False,
        times_input: bool = False,
        pooling: str = "abs",
        seed: int | None = 0,
        batch_size: int | str = 64,
    ) -> None:
        self.n_samples = n_samples
        self.noise_level = noise_level
        self.squared = squared
        self.times_input = times_input
        self.pooling = pooling
        self.seed = seed
        self.batch_size = batch_size

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """One gradient pass per noisy copy: ``n_samples`` per image."""
        return Cost(gradient_passes=self.n_samples)

    def noise_std(self, inputs: torch.Tensor) -> torch.Tensor:
        """Each image's sigma, ``noise_level * (max - min)`` of its values: (B,) float32."""
        flat = inputs.detach().float().flatten(1)
        return self.noise_level * (flat.amax(dim=1) - flat.amin(dim=1))

    def noise(self, image: torch.Tensor, std: float, seed: int) -> torch.Tensor:
        """The ``n_samples`` x C x H x W noise of one image (C x H x W), on the CPU.

        Drawn as ``torch.normal(0, full(std))`` from a generator seeded with
        ``content_seed(seed, image values)``: the draw Captum's ``NoiseTunnel`` makes from
        torch's global generator seeded the same way. :meth:`pixel_attributions` draws the
        same values a block of samples at a time (:class:`NoiseStream`).
        """
        return NoiseStream(image, std, seed, self.n_samples, self.n_samples).take(
            list(range(self.n_samples))
        )

    def pixel_attributions(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target
    ) -> torch.Tensor:
        """The B x C x H x W attributions before pooling (unguarded: for inspection and tests;
        :meth:`~xvit.Explainer.attribute` runs it with the model's state kept)."""
        x = inputs.detach()
        seed = resolve_seed(self.seed)
        stds = self.noise_std(x).tolist()
        # each image's noise, drawn a block of samples at a time as its copies are needed:
        # chunks run through the images (and each image's samples) in order, so an image no
        # longer needed is never needed again, and memory does not grow with n_samples
        chunk = inputs_per_pass(self.batch_size, adapter, x)
        streams: dict[int, NoiseStream] = {}

        def noisy(owners: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
            needed = owners.tolist()
            for i in set(streams) - set(needed):
                del streams[i]
            for i in set(needed) - set(streams):
                streams[i] = NoiseStream(x[i], stds[i], seed, self.n_samples, chunk)
            step_list = steps.tolist()
            rows = [
                streams[i].take([k for j, k in zip(needed, step_list) if j == i]).to(x)
                for i in dict.fromkeys(needed)
            ]
            return x[owners] + torch.cat(rows)

        total = torch.zeros_like(x)
        passes = chunked_input_gradients(
            adapter, target, self.n_samples, len(x), chunk, x.device, noisy
        )
        for owners, _, copies, grads in passes:
            values = copies * grads if self.times_input else grads
            total.index_add_(0, owners, values * values if self.squared else values)
        return total / self.n_samples

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        return pool_to_patches(
            self.pixel_attributions(adapter, inputs, target), adapter, self.pooling
        )


class NoiseStream:
    """One image's SmoothGrad noise, drawn on demand a block of samples at a time.

    The values equal one draw of all ``n_samples`` x C x H x W values at once from the
    image's generator (:meth:`SmoothGrad.noise`, Captum's draw): torch's CPU normal sampler
    fills 16 values at a time from a sequential stream of uniforms, so consecutive draws whose
    sizes are multiples of 16 values (and a last one of at least 16) continue one draw exactly.
    Blocks are sized so; tests/test_gradient_methods.py checks the equality.

    Args:
        image: The C x H x W image (its values seed the generator).
        std: The image's sigma.
        seed: The call's seed.
        n_samples: Samples in all.
        block: Samples per draw, at least (rounded up to a multiple of 16 values).
    """

    def __init__(
        self, image: torch.Tensor, std: float, seed: int, n_samples: int, block: int
    ) -> None:
        values = image.detach().float().cpu().contiguous().numpy().tobytes()
        self._gen = generator(content_seed(seed, values))
        self._shape = tuple(image.shape)
        self._std = std
        self._n = n_samples
        numel = max(1, image.numel())
        unit = 16 // math.gcd(numel, 16)
        self._block = max(unit, -(-max(1, block) // unit) * unit)
        self._numel = numel
        self._start = 0  # first sample of the current block
        self._values = torch.empty(0, *self._shape)

    def take(self, steps: list[int]) -> torch.Tensor:
        """The noise of samples ``steps`` (increasing, never before an earlier call's)."""
        out = []
        for k in steps:
            end = self._start + len(self._values)
            if k < self._start:
                raise RuntimeError(f"noise of sample {k} was already dropped")
            while k >= end:
                self._start, self._values = end, self._draw(end)
                end = self._start + len(self._values)
            out.append(self._values[k - self._start])
        return torch.stack(out) if out else torch.empty(0, *self._shape)

    def _draw(self, start: int) -> torch.Tensor:
        stop = min(start + self._block, self._n)
        if 0 < (self._n - stop) * self._numel < 16:  # a short last draw would differ
            stop = self._n
        stds = torch.full((stop - start, *self._shape), self._std, dtype=torch.float32)
        return torch.normal(0.0, stds, generator=self._gen)
