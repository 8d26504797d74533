"""Substrates: what deleted (or not yet inserted) pixels are replaced with, in input space.

Every substrate is computed on the preprocessed batch, so that a model sees exactly what the
metric describes:

- ``zero``: 0 in the model's input space, i.e. the normalisation mean colour.
- ``black``: true black, the normalised value of a 0 pixel (``-mean / std`` per channel).
- ``mean``: each image's own per-channel mean colour.
- ``blur``: a Gaussian blur of the image (normalised kernel, reflect padding, as torchvision's
  ``gaussian_blur``). Blurring commutes with the per-channel normalisation, so blurring the
  input equals normalising the blurred pixels.
- ``random``: uniform noise in [0, 1] pixel space, normalised; drawn per image from that
  image's seed, so it does not depend on the batch the image is in.

Variants that reproduce the reference evaluation codes (the protocols of
:mod:`xvit.metrics._causal` map the plain names onto them; each can also be named directly):

- ``rise_blur``: RISE's ``gkern`` (``evaluation.py``): ``scipy.ndimage.gaussian_filter`` of
  a ``kernel x kernel`` delta (its default reflect mode and truncation at 4 sigma fold the
  Gaussian back into the window, so the taps come out almost flat for sigma 5 on 11 taps),
  cast to float32 and applied by a zero-padded convolution: pixels near the border are
  darkened towards 0 (the mean colour), as in RISE's ``Evaluation.ipynb``.
- ``scalar_mean``: one mean over all channels and pixels of the image (the GradMask authors'
  ``mean`` baseline, ``tensor.mean()``).
- ``randn``: standard normal noise in the model's input (normalised) space, a fresh draw for
  every curve point (the GradMask authors' ``random`` baseline, ``torch.randn_like`` inside
  the per-percentage loop); image ``i`` draws from a CPU generator seeded with its seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .._errors import InvalidInputError, ParameterError
from ..models import Preprocessing

SUBSTRATES = ("blur", "zero", "black", "mean", "random", "rise_blur", "scalar_mean", "randn")
#: Substrates drawn anew at every curve point rather than once per image.
PER_POINT = ("randn",)


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """A sampled 1-D Gaussian of odd length ``kernel_size``, normalised to sum 1, in ``dtype``.

    Computed in the image's dtype, as torchvision's ``gaussian_blur`` does, so that the two
    agree to the last bit or two.
    """
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=dtype)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def folded_gaussian1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """1-D taps of ``scipy.ndimage.gaussian_filter1d`` applied to a centred delta (float64).

    SciPy samples the Gaussian on ``-r .. r`` with ``r = int(4 * sigma + 0.5)``, normalises
    it, and extends the signal in its ``"reflect"`` mode (``d c b a | a b c d | d c b a``,
    period ``2 * kernel_size``). The delta at the centre ``c`` is therefore repeated at
    ``c + 2 n k`` and mirrored at ``-1 - c + 2 n k``; tap ``i`` sums the Gaussian weights
    at the offsets of every copy within reach.
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    centre = kernel_size // 2
    period = 2 * kernel_size
    taps = torch.zeros(kernel_size, dtype=torch.float64)
    for i in range(kernel_size):
        lo, hi = i - radius, i + radius
        for base in (centre, -1 - centre):
            first = base + period * math.ceil((lo - base) / period)
            for pos in range(first, hi + 1, period):
                taps[i] += weights[pos - i + radius]
    return taps


def rise_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """RISE's blur: the folded kernel's outer product in float32, zero padding, per channel."""
    b, c, h, w = x.shape
    taps = folded_gaussian1d(kernel_size, sigma)
    kernel = torch.outer(taps, taps).to(torch.float32).to(device=x.device, dtype=x.dtype)
    flat = x.reshape(b * c, 1, h, w)
    out = F.conv2d(flat, kernel.view(1, 1, kernel_size, kernel_size), padding=kernel_size // 2)
    return out.reshape(b, c, h, w)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Blur a B x C x H x W batch channel by channel (outer-product kernel, reflect padding)."""
    b, c, h, w = x.shape
    pad = kernel_size // 2
    if pad >= h or pad >= w:
        raise ParameterError(
            f"blur kernel {kernel_size} is too large for a {h}x{w} input (reflect padding "
            f"needs kernel_size // 2 < height and width); use a smaller blur_kernel"
        )
    k = gaussian_kernel1d(kernel_size, sigma, x.dtype).to(x.device)
    kernel = k.view(-1, 1) * k.view(1, -1)
    flat = x.reshape(b * c, 1, h, w)
    flat = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, kernel_size, kernel_size))
    return flat.reshape(b, c, h, w)


def make_substrate(
    name: str,
    x: torch.Tensor,
    preprocessing: Preprocessing,
    *,
    blur_kernel: int,
    blur_sigma: float,
    seeds: Sequence[int],
) -> torch.Tensor:
    """The substrate batch (same shape as ``x``) named ``name``; see the module docstring."""
    if name == "zero":
        return torch.zeros_like(x)
    if name == "black":
        return preprocessing.normalize(torch.zeros_like(x))
    if name == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if name == "scalar_mean":
        return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x).clone()
    if name == "blur":
        return gaussian_blur(x, blur_kernel, blur_sigma)
    if name == "rise_blur":
        return rise_blur(x, blur_kernel, blur_sigma)
    if name == "random":
        noise = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            noise.append(torch.rand(x.shape[1:], generator=g, dtype=torch.float32))
        pixels = torch.stack(noise).to(device=x.device, dtype=x.dtype)
        return preprocessing.normalize(pixels)
    raise ParameterError(f"unknown substrate {name!r}; choose one of {', '.join(SUBSTRATES)}")


def normal_draws(seed: int, shape: tuple[int, ...], points: int) -> Iterator[torch.Tensor]:
    """``points`` successive standard normal draws of ``shape`` from a CPU generator ``seed``.

    The same sequence as ``torch.manual_seed(seed)`` followed by ``torch.randn_like`` of a
    float32 CPU tensor of that shape, once per curve point.
    """
    g = torch.Generator().manual_seed(int(seed))
    for _ in range(points):
        yield torch.randn(shape, generator=g, dtype=torch.float32)


def check_preprocessing(preprocessing: Preprocessing, channels: int) -> None:
    """The model's mean/std must have one entry per input channel for black and random."""
    if len(preprocessing.mean) != channels or len(preprocessing.std) != channels:
        raise InvalidInputError(
            f"the model's preprocessing has {len(preprocessing.mean)} mean values for "
            f"{channels}-channel inputs; the 'black' and 'random' substrates need one per channel"
        )
