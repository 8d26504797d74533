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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._errors import InvalidInputError, ParameterError
from ..models._preprocessing import Preprocessing

SUBSTRATES = ("blur", "zero", "black", "mean", "random")


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """A sampled 1-D Gaussian of odd length ``kernel_size``, normalised to sum 1 (float64)."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Blur a B x C x H x W batch channel by channel (separable kernel, reflect padding)."""
    b, c, h, w = x.shape
    pad = kernel_size // 2
    if pad >= h or pad >= w:
        raise ParameterError(
            f"blur kernel {kernel_size} is too large for a {h}x{w} input (reflect padding "
            f"needs kernel_size // 2 < height and width); use a smaller blur_kernel"
        )
    k = gaussian_kernel1d(kernel_size, sigma).to(device=x.device, dtype=x.dtype)
    flat = x.reshape(b * c, 1, h, w)
    flat = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, k.view(1, 1, 1, -1))
    flat = F.conv2d(flat, k.view(1, 1, -1, 1))
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
    if name == "blur":
        return gaussian_blur(x, blur_kernel, blur_sigma)
    if name == "random":
        noise = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            noise.append(torch.rand(x.shape[1:], generator=g, dtype=torch.float32))
        pixels = torch.stack(noise).to(device=x.device, dtype=x.dtype)
        return preprocessing.normalize(pixels)
    raise ParameterError(f"unknown substrate {name!r}; choose one of {', '.join(SUBSTRATES)}")


def check_preprocessing(preprocessing: Preprocessing, channels: int) -> None:
    """The model's mean/std must have one entry per input channel for black and random."""
    if len(preprocessing.mean) != channels or len(preprocessing.std) != channels:
        raise InvalidInputError(
            f"the model's preprocessing has {len(preprocessing.mean)} mean values for "
            f"{channels}-channel inputs; the 'black' and 'random' substrates need one per channel"
        )
