"""Image preprocessing as the model's own config states it (size, crop, mean, std), and the
preprocessing a loaded model was trained with, remembered for its adapter."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._errors import InvalidInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class Preprocessing:
    """Turns a PIL image into a normalised C x H x W tensor.

    Attributes:
        size: (height, width) of the model input.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by.
        interpolation: Resampling filter name ("bilinear", "bicubic", ...).
        crop_pct: Centre-crop fraction (timm's ``crop_pct``); 1.0 with ``squash`` resizes
            straight to ``size`` as HF's ViT image processor does.
        squash: Resize both sides to ``size`` (ignoring aspect) instead of
            resize-shorter-side-then-centre-crop.

    Example:
        >>> from PIL import Image
        >>> p = Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> p(Image.new("RGB", (40, 50))).shape
        torch.Size([3, 32, 32])
    """

    size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    squash: bool = False

    def __call__(self, image: object) -> torch.Tensor:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"Preprocessing takes a PIL image, got {type(image).__name__}")
        image = image.convert("RGB")
        resample = _PIL_FILTERS.get(self.interpolation, 3)
        nw, nh, left, top = self.resize_layout(image.size)
        image = image.resize((nw, nh), resample=resample)
        if not self.squash:
            th, tw = self.size
            image = image.crop((left, top, left + tw, top + th))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        return self.normalize(tensor)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] pixels to the model's input space (works on C x H x W or B x C x H x W)."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map model inputs back to [0, 1] pixels (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def resize_layout(self, original_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Where an image of ``original_size`` (width, height) goes in :meth:`__call__`.

        Returns:
            (resized width, resized height, crop left, crop top): the image is resized to the
            first two, then the model input is the ``size`` window at (left, top).
        """
        w, h = int(original_size[0]), int(original_size[1])
        th, tw = self.size
        if self.squash:
            return tw, th, 0, 0
        if th == tw:
            short = math.floor(th / self.crop_pct)
            if w <= h:
                nw, nh = short, max(1, round(h * short / w))
            else:
                nw, nh = max(1, round(w * short / h)), short
        else:
            nw, nh = math.floor(tw / self.crop_pct), math.floor(th / self.crop_pct)
        return nw, nh, max(0, round((nw - tw) / 2)), max(0, round((nh - th) / 2))

    def transform_boxes(
        self,
        boxes: Sequence[Sequence[float]],
        original_size: tuple[int, int],
    ) -> tuple[tuple[float, float, float, float], ...]:
        """Map boxes from the original image into model-input pixel coordinates.

        Applies the same resize and centre crop as :meth:`__call__`: a box is scaled with the
        image, shifted by the crop offset, and clipped to the input; boxes that the crop cuts
        away entirely are dropped.

        Args:
            boxes: (x0, y0, x1, y1) boxes in the original image's pixel coordinates (edges:
                a box covering pixel columns 2..4 is x0=2, x1=5).
            original_size: (width, height) of the original image, as PIL's ``Image.size``.

        Returns:
            The boxes in input coordinates, in the same order, without the dropped ones.

        Raises:
            InvalidInputError: A box is not four numbers with x0 <= x1 and y0 <= y1, or the
                size is not two positive integers.

        Example:
            >>> p = Preprocessing(size=(32, 32), squash=True)
            >>> p.transform_boxes([(0, 0, 32, 16)], original_size=(64, 64))
            ((0.0, 0.0, 16.0, 8.0),)
        """
        if (
            len(original_size) != 2
            or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in original_size
            )
            or min(original_size) <= 0
        ):
            raise InvalidInputError(
                f"original_size must be the image's (width, height) in pixels, got "
                f"{original_size!r}; pass PIL's image.size"
            )
        w, h = int(original_size[0]), int(original_size[1])
        nw, nh, left, top = self.resize_layout((w, h))
        th, tw = self.size
        sx, sy = nw / w, nh / h
        out = []
        for box in boxes:
            values = tuple(box)
            if len(values) != 4 or not all(
                isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
                for v in values
            ):
                raise InvalidInputError(
                    f"a box must be four finite numbers (x0, y0, x1, y1), got {box!r}"
                )
            x0, y0, x1, y1 = (float(v) for v in values)
            if x1 < x0 or y1 < y0:
                raise InvalidInputError(
                    f"box {box!r} has x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1) with the "
                    f"top-left corner first"
                )
            nx0 = min(max(x0 * sx - left, 0.0), float(tw))
            nx1 = min(max(x1 * sx - left, 0.0), float(tw))
            ny0 = min(max(y0 * sy - top, 0.0), float(th))
            ny1 = min(max(y1 * sy - top, 0.0), float(th))
            if nx1 > nx0 and ny1 > ny0:
                out.append((nx0, ny0, nx1, ny1))
        return tuple(out)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1) if x.dim() == 3 else (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Preprocessing] = weakref.WeakKeyDictionary()


def attach_preprocessing(model: nn.Module, preprocessing: Preprocessing) -> None:
    """Remember the preprocessing a loaded model was trained with (used by its adapter).

    Example:
        >>> import timm, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1, img_size=32,
        ...                       patch_size=8)
        >>> attach_preprocessing(m, xvit.Preprocessing(size=(32, 32), mean=(0.5,) * 3,
        ...                                            std=(0.5,) * 3))
        >>> xvit.get_adapter(m).preprocessing.mean
        (0.5, 0.5, 0.5)
    """
    _ATTACHED[model] = preprocessing


def attached_preprocessing(model: nn.Module) -> Preprocessing | None:
    """The preprocessing attached by :func:`attach_preprocessing`, if any."""
    return _ATTACHED.get(model)
