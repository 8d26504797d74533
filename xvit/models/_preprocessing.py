"""Image preprocessing as the model's own config states it (size, crop, mean, std)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

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
        th, tw = self.size
        if self.squash:
            image = image.resize((tw, th), resample=resample)
        else:
            scale_h = math.floor(th / self.crop_pct)
            scale_w = math.floor(tw / self.crop_pct)
            w, h = image.size
            # resize the shorter side, keeping aspect, as timm's eval transform does
            if th == tw:
                short = scale_h
                if w <= h:
                    nw, nh = short, max(1, round(h * short / w))
                else:
                    nw, nh = max(1, round(w * short / h)), short
            else:
                nw, nh = scale_w, scale_h
            image = image.resize((nw, nh), resample=resample)
            left = max(0, round((nw - tw) / 2))
            top = max(0, round((nh - th) / 2))
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

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1) if x.dim() == 3 else (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std
