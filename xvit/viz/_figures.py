"""Figures and panels: matplotlib figures on the Agg canvas (never pyplot), image panels,
colorbars, and the texts that title a panel."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..explanation import Explanation


def new_figure(width: float, height: float, **kwargs: Any) -> Any:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def target_text(explanation: Explanation, index: int) -> str:
    """The explained class of image ``index``: ``class 3``, or ``tabby (281)``."""
    target = int(explanation.targets[index])
    name = explanation.class_names[index] if explanation.class_names else str(target)
    return f"class {target}" if name == str(target) else f"{name} ({target})"


def probability_text(explanation: Explanation, index: int) -> str:
    """The model's probability of the explained class of image ``index``: ``p=0.93``."""
    return f"p={float(explanation.probabilities[index]):.2f}"


def method_title(explanation: Explanation, index: int) -> str:
    """A panel's title: the method, the explained class and its probability."""
    return (
        f"{explanation.method}: {target_text(explanation, index)}, "
        f"{probability_text(explanation, index)}"
    )


def add_colorbar(fig: Any, axes: Any, cmap: Any, **kwargs: Any) -> Any:
    """One colorbar of saliency 0 to 1 in ``cmap`` beside ``axes``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=axes, **kwargs)
    bar.set_label("saliency (each map scaled to 0-1)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def show(ax: Any, pixels: np.ndarray, title: str | None, fontsize: float = 9) -> None:
    """``pixels`` on ``ax``, without ticks or frame, under ``title``."""
    ax.imshow(np.clip(pixels, 0.0, 1.0))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=fontsize)
