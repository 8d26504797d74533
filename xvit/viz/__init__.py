"""Pictures of explanations: overlays, comparison grids, benchmark curves and timings.

Every figure is a :class:`matplotlib.figure.Figure` on the Agg canvas, built without pyplot:
nothing here switches matplotlib's global backend, opens a window or calls ``plt.show``.
Save a figure with ``fig.savefig("out.png")``; in Jupyter, a figure returned by the last
line of a cell is displayed.

Maps are drawn on the images they explain: on the model's input (a preprocessed tensor,
shown de-normalised) or on the original images (paths, PIL images, arrays), where the map is
put back where the model looked, through the model's own resize and centre crop. Each map is
min-max scaled to [0, 1] on its own, smoothed bilinearly for display or shown on its native
patch grid (``grid=True``), in a perceptually uniform colormap (``inferno`` by default).

Example:
    >>> import torch, xvit
    >>> from xvit.viz import compare, overlay
    >>> model = xvit.load_model("xvit:digits-vit")
    >>> x = torch.randn(2, 3, 64, 64)
    >>> e = xvit.explain("attention", model, x)
    >>> fig = overlay(x, e, preprocessing=xvit.get_adapter(model).preprocessing)
    >>> len(fig.axes)  # one panel per image
    2
    >>> grid = compare(x, {"attention": e, "gradcam": xvit.explain("gradcam", model, x)})
    >>> len(grid.axes)  # 2 rows x (input + 2 methods), and the colorbar
    7

The modules by job: :mod:`~xvit.viz.overlays` (maps over images, PNG files),
:mod:`~xvit.viz.grid` (the comparison grid), :mod:`~xvit.viz.curves` (benchmark plots),
:mod:`~xvit.viz.randomisation` (the MPRT figure: similarity as layers are randomised); the
private ``_pictures`` (images and where the input lies in them), ``_compositing`` (maps
resampled and blended), ``_figures`` (figures and panel titles) and ``_metric_labels`` (what a
figure says about a metric, from its class).
"""

from __future__ import annotations

import warnings
from typing import Any

from ..metrics import get_metric, list_metrics
from ._compositing import DEFAULT_CMAP
from ._pictures import MAX_DISPLAY_SIDE as MAX_DISPLAY_SIDE  # public, as before the split
from .curves import plot_curves, plot_times
from .grid import compare
from .overlays import display_images, heatmap, overlay, overlay_array, save_overlays
from .randomisation import plot_mprt

__all__ = [
    "DEFAULT_CMAP",
    "compare",
    "display_images",
    "heatmap",
    "overlay",
    "overlay_array",
    "plot_curves",
    "plot_mprt",
    "plot_times",
    "save_overlays",
]


def __getattr__(name: str) -> Any:
    """``METRIC_ABBREVIATIONS``, deprecated: the short names are the metrics'
    :attr:`~xvit.metrics.Metric.short_name` now."""
    if name == "METRIC_ABBREVIATIONS":
        warnings.warn(
            "xvit.viz.METRIC_ABBREVIATIONS is deprecated; read the short_name of the metric "
            "class instead (xvit.metrics.get_metric(name).short_name)",
            DeprecationWarning,
            stacklevel=2,
        )
        classes = (get_metric(n) for n in list_metrics())
        return {cls.name: cls.short_name for cls in classes if cls.short_name}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
