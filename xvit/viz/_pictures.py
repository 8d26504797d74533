"""The images maps are drawn on: the model's input, or an original image and where the
model's input lies in it (through the model's own resize and centre crop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._errors import InvalidInputError, ParameterError
from .._inputs import as_image
from ..explanation import Explanation

#: Original images larger than this (longest side, pixels) are downscaled for display only.
MAX_DISPLAY_SIDE = 1024


@dataclass
class Picture:
    """An image to draw on, and where the model input lies in it.

    ``layout`` is (sx, sy, left, top): the image's pixel coordinate x (continuous, from its
    left edge) lies at input coordinate ``x * sx - left``, and likewise y with sy and top.
    """

    pixels: np.ndarray
    layout: tuple[float, float, float, float]


#: The layout of a picture that is the model input itself.
IDENTITY = (1.0, 1.0, 0.0, 0.0)


def check_explanation(explanation: Any) -> Explanation:
    """``explanation``, checked to be an :class:`~xvit.Explanation`."""
    if not isinstance(explanation, Explanation):
        raise InvalidInputError(
            f"expected an xvit.Explanation (what xvit.explain returns), got "
            f"{type(explanation).__name__}"
        )
    return explanation


def check_preprocessing(preprocessing: Any) -> Any:
    """``preprocessing``, checked to be None or an :class:`~xvit.Preprocessing`."""
    if preprocessing is not None and not (
        hasattr(preprocessing, "denormalize") and hasattr(preprocessing, "resize_layout")
    ):
        raise ParameterError(
            f"preprocessing must be an xvit.Preprocessing (xvit.get_adapter(model)."
            f"preprocessing), got {type(preprocessing).__name__}"
        )
    return preprocessing


def check_index(index: Any, n: int) -> int:
    """``index`` of an image of a batch of ``n``, negative ones counted from the end."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise ParameterError(f"index must be an image index in 0 .. {n - 1}, got {index!r}")
    return int(index) % n


def input_view(x: torch.Tensor, preprocessing: Any | None) -> np.ndarray:
    """A C x H x W model input as H x W x 3 pixels in [0, 1]."""
    x = x.detach().float().cpu()
    if preprocessing is not None:
        x = preprocessing.denormalize(x)
    else:  # unknown normalisation: stretch the image's own range
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    arr = x.clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3], dtype=np.float32)


def _original(item: Any, input_size: tuple[int, int], preprocessing: Any | None) -> Picture:
    """An original image (path, PIL, array), and where the model's input lies in it."""
    from PIL import Image

    img = as_image(item)
    w, h = img.size
    big = max(w, h)
    if preprocessing is None:
        if (h, w) != tuple(input_size):
            raise InvalidInputError(
                f"an image is {w}x{h} (width x height) but the model's input was "
                f"{input_size[1]}x{input_size[0]}: pass preprocessing="
                f"xvit.get_adapter(model).preprocessing, so that the map is placed where the "
                f"model looked, or pass the preprocessed input tensor instead"
            )
        sx, sy, left, top = IDENTITY
    else:
        if tuple(preprocessing.size) != tuple(input_size):
            raise ParameterError(
                f"the preprocessing makes {preprocessing.size[0]}x{preprocessing.size[1]} inputs "
                f"but the explanation's input was {input_size[0]}x{input_size[1]}; pass the "
                f"preprocessing of the model that was explained"
            )
        nw, nh, crop_left, crop_top = preprocessing.resize_layout((w, h))
        sx, sy, left, top = nw / w, nh / h, float(crop_left), float(crop_top)
    if big > MAX_DISPLAY_SIDE:
        f = MAX_DISPLAY_SIDE / big
        size = (max(1, round(w * f)), max(1, round(h * f)))
        sx, sy = sx * w / size[0], sy * h / size[1]
        img = img.resize(size, resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    return Picture(pixels, (sx, sy, left, top))


def pictures_for(images: Any, explanation: Explanation, preprocessing: Any | None) -> list[Picture]:
    """One picture per map of ``explanation``, from ``images`` or what the explanation holds."""
    n = len(explanation)
    size = explanation.input_size
    if images is None:
        originals = explanation.images
        usable = originals is not None and (
            preprocessing is not None
            or all(tuple(getattr(im, "size", ())) == (size[1], size[0]) for im in originals)
        )
        if usable and originals is not None:
            images = list(originals)
        elif explanation.inputs is not None:
            images = explanation.inputs
        elif originals is not None:
            images = list(originals)  # raises below with the advice to pass preprocessing
        else:
            raise InvalidInputError(
                "the explanation carries no images: pass them (the input tensor, or the "
                "original images) as the first argument"
            )
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise InvalidInputError(
                f"an image tensor must be a preprocessed C x H x W image or B x C x H x W batch, "
                f"got shape {tuple(images.shape)}"
            )
        items: list[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if len(items) != n:
        raise InvalidInputError(
            f"got {len(items)} images for {n} maps: pass one image per explained image, in the "
            f"same order"
        )
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.dim() != 3 or tuple(item.shape[-2:]) != tuple(size):
                raise InvalidInputError(
                    f"an image tensor is taken as the model's input and must be C x "
                    f"{size[0]} x {size[1]} like the explained input, got shape "
                    f"{tuple(item.shape)}; pass original images as PIL images, arrays or paths"
                )
            out.append(Picture(input_view(item, preprocessing), IDENTITY))
        else:
            out.append(_original(item, size, preprocessing))
    return out
