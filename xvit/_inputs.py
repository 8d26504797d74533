"""Turn what users pass (paths, PIL images, arrays, tensors; targets) into checked tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._errors import InvalidInputError
from ._targets import SCORE_TARGET
from .models._base import ModelAdapter
from .models._labels import class_index


def load_image(path: str | Path) -> Any:
    """Open an image file as an RGB PIL image, with clear errors for bad files.

    Example:
        >>> import tempfile, xvit
        >>> from PIL import Image
        >>> path = tempfile.mkdtemp() + "/grey.png"
        >>> Image.new("L", (5, 4)).save(path)
        >>> image = xvit.load_image(path)
        >>> image.mode, image.size
        ('RGB', (5, 4))
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"image file not found: {p}; check the path")
    if p.is_dir():
        raise InvalidInputError(f"{p} is a folder, not an image file; pass the image files in it")
    try:
        with Image.open(p) as img:
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"{p} is not an image PIL can read; pass a PNG, JPEG or other image file"
        ) from None
    except OSError as exc:
        raise InvalidInputError(
            f"could not read image {p} ({exc}); is the file truncated?"
        ) from None


def to_rgb(img: Any) -> Any:
    """Convert any PIL mode (L, LA, P, RGBA, 16-bit I;16, I, F) to 8-bit RGB."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def array_to_image(arr: np.ndarray) -> Any:
    """An H x W, H x W x 1/3/4 uint8 (or uint16) array as an RGB PIL image."""
    from PIL import Image

    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InvalidInputError(
            f"an image array must be H x W or H x W x 3 (or 4), got shape {arr.shape}; "
            f"preprocessed batches should be passed as torch tensors B x C x H x W"
        )
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 65535.0 * 255.0).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
            arr = (arr * 255.0).round().astype(np.uint8)
        else:
            raise InvalidInputError(
                f"image arrays must be uint8 (0-255) or float in [0, 1], got {arr.dtype}"
            )
    return to_rgb(Image.fromarray(arr))


def prepare_inputs(
    inputs: Any, adapter: ModelAdapter, *, to_device: bool = True
) -> tuple[torch.Tensor, list[Any] | None]:
    """A checked B x C x H x W tensor in the model's dtype, and the PIL images if any.

    Tensors are taken as already preprocessed; everything else goes through the model's own
    preprocessing. With ``to_device`` (default) the tensor is moved to the model's device;
    without, it stays where it is (host memory for images), so that callers can move it one
    group of images at a time.
    """
    if isinstance(inputs, torch.Tensor):
        x = inputs
        adapter.check_input(x)
        if not torch.isfinite(x).all():
            raise InvalidInputError(
                "the input contains NaN or infinite values; clean or re-preprocess it"
            )
        return x.to(device=adapter.device if to_device else x.device, dtype=adapter.dtype), None
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise InvalidInputError("no inputs given: pass at least one image")
    images = [as_image(item) for item in items]
    prep = adapter.preprocessing
    x = torch.stack([prep(img) for img in images])
    adapter.check_input(x)
    return x.to(device=adapter.device if to_device else x.device, dtype=adapter.dtype), images


def as_image(item: Any) -> Any:
    """A path, PIL image or array as an RGB PIL image."""
    from PIL import Image

    if isinstance(item, (str, Path)):
        return load_image(item)
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_image(item)
    if isinstance(item, torch.Tensor):
        raise InvalidInputError(
            "tensors inside a list are not accepted: stack them into one B x C x H x W tensor"
        )
    raise InvalidInputError(
        f"cannot use a {type(item).__name__} as an image: pass a path, a PIL image, an "
        f"H x W x 3 uint8 array, a list of these, or a B x C x H x W tensor"
    )


def resolve_targets(
    target: Any,
    logits: torch.Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """(B,) long targets: None -> predicted class; an int or class name for all; or one per
    image (ints and names may be mixed). Names are looked up in ``class_names``
    (see :func:`~xvit.models._labels.class_index`). A score-function target is not a class:
    :func:`xvit.explain` takes it before this is called, and here it is refused."""
    if target is None:
        return logits.argmax(dim=-1)
    indices = class_targets(target, logits.shape[0], num_classes, class_names)
    return indices.to(logits.device)


def class_targets(
    target: Any, b: int, num_classes: int, class_names: Sequence[str] | None = None
) -> torch.Tensor:
    """(B,) long CPU targets for ``b`` images from a target that is not None (an int or
    class name for all, or one per image): :func:`resolve_targets` without the logits.

    Example:
        >>> class_targets(2, 3, 5).tolist(), class_targets(["b", 0], 2, 3, ["a", "b", "c"]).tolist()
        ([2, 2, 2], [1, 0])
    """
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise InvalidInputError(f"target must hold integer class indices, got {target.dtype}")
        values = target.reshape(-1).tolist()
    elif isinstance(target, np.ndarray) and target.dtype.kind in "US":
        values = [str(v) for v in target.reshape(-1)]
    elif isinstance(target, (list, tuple, np.ndarray)):
        values = list(target)
        if not any(_is_name(v) for v in values):  # nested lists of ints flatten as before
            values = list(np.asarray(target).reshape(-1).tolist())
    else:
        values = [target]
    indices = []
    for v in values:
        if _is_name(v):
            indices.append(class_index(str(v), class_names, num_classes))
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidInputError(
                f"target must be an int class index or a class name (or one per image), got "
                f"{v!r} ({type(v).__name__})"
            )
        if not 0 <= int(v) < num_classes:
            hint = (
                " (-1 is what Explanation.targets holds for a score-function target: "
                "pass a class, or the score function where it is accepted)"
                if int(v) == SCORE_TARGET
                else ""
            )
            raise InvalidInputError(
                f"target {v} is out of range: the model has {num_classes} classes "
                f"(0 .. {num_classes - 1}){hint}"
            )
        indices.append(int(v))
    if len(indices) == 1:
        indices = indices * b
    if len(indices) != b:
        raise InvalidInputError(
            f"got {len(indices)} targets for {b} images: pass one target, or exactly one per image"
        )
    return torch.tensor(indices, dtype=torch.long)


def _is_name(value: Any) -> bool:
    return isinstance(value, str)
