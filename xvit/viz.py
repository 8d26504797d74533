"""Pictures of explanations: heatmap overlays (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .explanation import Explanation


def _to_display_image(image: Any, size: tuple[int, int]) -> np.ndarray:
    """An H x W x 3 float array in [0, 1] resized to ``size`` (height, width)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        img = image.convert("RGB").resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu()
        if arr.dim() == 3 and arr.shape[0] in (1, 3):
            arr = arr.permute(1, 2, 0)
        out = arr.numpy()
    else:
        out = np.asarray(image, dtype=np.float32)
        if out.max() > 1.0:
            out = out / 255.0
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.clip(out, 0.0, 1.0)


def display_images(explanation: Explanation, preprocessing: Any | None = None) -> list[np.ndarray]:
    """The images behind an explanation as the model saw them (cropped), in [0, 1]."""
    size = explanation.input_size
    if explanation.inputs is not None and preprocessing is not None:
        pixels = preprocessing.denormalize(explanation.inputs.float().cpu())
        return [_to_display_image(p, size) for p in pixels]
    if explanation.images is not None and preprocessing is None:
        return [_to_display_image(img, size) for img in explanation.images]
    if explanation.inputs is not None:
        x = explanation.inputs.float().cpu()
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        return [_to_display_image(p, size) for p in (x - lo) / (hi - lo).clamp_min(1e-8)]
    raise ValueError("the explanation carries no images; pass them to overlay() explicitly")


def heatmap(explanation: Explanation, index: int = 0, *, grid: bool = False) -> np.ndarray:
    """One map at input resolution, min-max scaled to [0, 1] (bilinear, or the patch grid)."""
    up = explanation.upsample(mode="nearest" if grid else "bilinear")[index]
    up = up - up.min()
    return (up / up.max().clamp_min(1e-12)).cpu().numpy()


def overlay(
    ax: Any,
    image: np.ndarray,
    saliency: np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "inferno",
    colorbar: bool = False,
    title: str | None = None,
) -> Any:
    """Draw ``saliency`` over ``image`` on matplotlib axes ``ax``.

    Args:
        ax: Matplotlib axes.
        image: H x W x 3 image in [0, 1].
        saliency: H x W map in [0, 1].
        alpha: Opacity of the heatmap.
        cmap: A perceptually uniform colormap name.
        colorbar: Add a colorbar.
        title: Axes title.
    """
    ax.imshow(image)
    im = ax.imshow(saliency, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


def save_overlays(
    explanation: Explanation,
    out_dir: str | Path,
    names: list[str],
    *,
    preprocessing: Any | None = None,
    alpha: float = 0.5,
    grid: bool = False,
) -> list[Path]:
    """Write one PNG per image: the image, and the heatmap over it, with the target's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = display_images(explanation, preprocessing)
    paths = []
    for i, name in enumerate(names):
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4), constrained_layout=True)
        axes[0].imshow(images[i])
        axes[0].set_axis_off()
        axes[0].set_title("input", fontsize=9)
        label = (
            explanation.class_names[i]
            if explanation.class_names
            else str(int(explanation.targets[i]))
        )
        prob = float(explanation.probabilities[i])
        overlay(
            axes[1],
            images[i],
            heatmap(explanation, i, grid=grid),
            alpha=alpha,
            colorbar=True,
            title=f"{explanation.method}: {label} (p={prob:.2f})",
        )
        path = out / f"{Path(name).stem}_{explanation.method}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
