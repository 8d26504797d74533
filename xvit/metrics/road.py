"""ROAD: remove pixels in saliency order by noisy linear imputation and track the accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve

from .._constraints import OneOf, Real, Satisfies, Spec
from .._errors import ParameterError
from .._forward import FORWARD_CONSTRAINTS, resolve_batch_size
from .._seeds import SEED, generator, index_seed
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency
from ._perturbed import perturbed_logits
from ._registration import register_metric

#: Quantus 0.6's percentages of pixels removed: 1, 3, 5, ..., 99.
QUANTUS_PERCENTAGES = tuple(float(p) for p in range(1, 100, 2))

#: The eight neighbours of a pixel (row offset, column offset) and their weights in the
#: imputation: 1/6 for the four sharing an edge, 1/12 for the four sharing a corner.
NEIGHBOURS = (
    *((dy, dx, 1 / 6) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))),
    *((dy, dx, 1 / 12) for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1))),
)

ORDERS = ("morf", "lerf")
TIES = ("argsort", "stable")


def linear_imputation(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(C, k) float64 values that fill ``pixels`` of ``image`` by linear imputation.

    Each removed pixel takes the weighted mean of its neighbours inside the image (weights
    :data:`NEIGHBOURS`, renormalised at the border), where a neighbour that is removed too
    is itself unknown: one sparse linear system over the ``k`` removed pixels, solved for
    all channels at once (Rong et al., 2022).

    Args:
        image: C x H x W values.
        pixels: (k,) flat indices (row-major) of the removed pixels, fewer than H x W.

    Example:
        >>> img = np.zeros((1, 3, 3)); img[0, :, 0] = 3.0  # left column 3, the rest 0
        >>> linear_imputation(img, np.array([4])).round(6).tolist()  # the centre pixel
        [[1.0]]
    """
    channels, height, width = image.shape
    k = len(pixels)
    values = image.reshape(channels, height * width).astype(np.float64)
    unknown = np.full(height * width, -1)
    unknown[pixels] = np.arange(k)
    rows, cols = pixels // width, pixels % width
    equation = np.arange(k)
    weight_sum = np.zeros(k)
    rhs = np.zeros((k, channels))
    entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for dy, dx, weight in NEIGHBOURS:
        r, c = rows + dy, cols + dx
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        eq, neighbour = equation[inside], (r * width + c)[inside]
        weight_sum[eq] += weight
        var = unknown[neighbour]
        free = var >= 0
        entries.append((eq[free], var[free], np.full(int(free.sum()), -weight)))
        rhs[eq[~free]] += weight * values[:, neighbour[~free]].T
    entries.append((equation, equation, weight_sum))
    rows_a, cols_a, vals_a = (np.concatenate(part) for part in zip(*entries, strict=True))
    matrix = csc_matrix((vals_a, (rows_a, cols_a)), shape=(k, k))
    return np.asarray(spsolve(matrix, rhs)).reshape(k, channels).T


def imputation_noise(seed: int, channels: int, count: int, point: int) -> torch.Tensor:
    """The standard-normal draws (C x count, float64) that curve point ``point`` of an image
    with seed ``seed`` adds (times ``noise``) to its imputed pixels, in removal order: a
    generator seeded with ``index_seed(seed, point)``, so that no draw depends on which other
    points or images are scored."""
    gen = generator(index_seed(seed, point))
    return torch.randn(channels, count, generator=gen, dtype=torch.float64)


def _percentages(value: Any) -> tuple[float, ...] | None:
    if isinstance(value, (str, bytes)):
        return None
    try:
        values = tuple(float(p) for p in value)
    except (TypeError, ValueError):
        return None
    increasing = all(b > a for a, b in pairwise(values))
    inside = all(0 <= p < 100 for p in values)
    return values if values and increasing and inside else None


@register_metric
class ROAD(Metric):
    """ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022).

    For each percentage ``p`` the ``int(H * W * p / 100)`` pixels ranked first (``order``)
    are removed and filled by noisy linear imputation: each takes the weighted mean of its
    eight neighbours (edges 1/6, corners 1/12), removed neighbours being unknowns of one
    sparse linear system, plus ``noise`` times standard-normal noise, in every channel. The
    curve is whether the model still predicts the target class (1 or 0) at each percentage,
    and the score the mean of that curve over the percentages. Most relevant first
    (``"morf"``, default): a faithful map makes the accuracy fall fast, so lower is better;
    least relevant first (``"lerf"``): it should stay high, and higher is better
    (``higher_is_better`` follows ``order``).

    With the defaults it is Quantus 0.6's ``ROAD`` (same percentages, imputation, noise and
    pixel order), per image: the mean over images of the curves is Quantus' result. Quantus
    ranks the map broadcast over the channels, which fails on colour images; xvit ranks the
    pixels (one map value each) and imputes all channels of a removed pixel, as Quantus'
    imputation function does.

    Args:
        percentages: Percentages of the pixels removed at the curve points, strictly
            increasing within [0, 100) (default Quantus': 1, 3, ..., 99).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        noise: Standard deviation of the Gaussian noise added to imputed values, in the
            model's preprocessed units (0.01 as Quantus and the authors' code).
        ties: Order of pixels of equal saliency: ``"argsort"`` (numpy's default sort of
            the negated float32 map, as Quantus) or ``"stable"`` (row-major).
        upsample: How maps reach the input size.
        batch_size: Model inputs (imputed images) per forward pass, or "auto".
        seed: Seed of the noise for calls without per-image ``seeds`` (see
            :class:`~xvit.metrics.Metric`); the draws of image ``i`` at point ``j`` come
            from :func:`imputation_noise`.

    References:
        Y. Rong, T. Leemann, V. Borisov, G. Kasneci, E. Kasneci, "A Consistent and
        Efficient Evaluation Strategy for Attribution Methods", ICML 2022.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import ROAD
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = ROAD(percentages=(10, 50, 90))(m, torch.randn(1, 3, 32, 32), None,
        ...                                     torch.rand(1, 4, 4))
        >>> r.curves.shape, ROAD.higher_is_better, ROAD(order="lerf").higher_is_better
        (torch.Size([1, 3]), False, True)
    """

    name = "road"
    summary = "accuracy as salient pixels are replaced by noisy linear imputation"
    paper = "Rong et al., A Consistent and Efficient Evaluation Strategy for Attribution, ICML 2022"
    cost = (
        "one sparse linear solve (on the CPU) and one forward per percentage (50 by default) "
        "per image"
    )
    higher_is_better = False
    needs_model = True
    curve = True
    expensive = True
    randomized = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "percentages": Satisfies(
            lambda v: _percentages(v) is not None,
            "strictly increasing numbers in [0, 100)",
            _percentages,
        ),
        "order": OneOf(*ORDERS),
        "noise": Real(low=0),
        "ties": OneOf(*TIES),
        "upsample": UPSAMPLE,
        "batch_size": FORWARD_CONSTRAINTS["batch_size"],
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        percentages: Sequence[float] = QUANTUS_PERCENTAGES,
        order: str = "morf",
        noise: float = 0.01,
        ties: str = "argsort",
        upsample: str = "nearest",
        batch_size: int | str = 64,
        seed: int | None = 0,
    ) -> None:
        self.percentages = tuple(percentages)
        self.order = order
        self.noise = noise
        self.ties = ties
        self.upsample = upsample
        self.batch_size = batch_size
        self.seed = seed
        # the direction follows the order; the benchmark reads it from the instance
        self.higher_is_better = order == "lerf"  # type: ignore[misc]

    def counts(self, height: int, width: int) -> torch.Tensor:
        """(S,) pixels removed at each curve point: ``int(H * W * p / 100)``, as Quantus."""
        return torch.tensor([int(height * width * p / 100) for p in self.percentages])

    def ranking(self, saliency: torch.Tensor) -> np.ndarray:
        """B x (H * W) flat pixel indices in removal order."""
        flat = saliency.detach().float().cpu().reshape(saliency.shape[0], -1).numpy()
        keys = -flat if self.order == "morf" else flat
        if self.ties == "stable":
            return np.argsort(keys, axis=1, kind="stable")
        return np.argsort(keys, axis=1)

    def score(self, batch: Batch) -> MetricResult:
        """The accuracy curves of the batch and their means."""
        adapter, target = batch.adapter, batch.target
        assert adapter is not None and target is not None  # needs_model
        b, c, h, w = batch.x.shape
        counts = self.counts(h, w).tolist()
        if counts[-1] >= h * w:
            raise ParameterError(f"{self.name}: at least one pixel must be kept")
        order = self.ranking(batch.saliency)
        images = batch.x.detach().double().cpu().numpy()

        def build(image: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
            out = []
            for i, j in zip(image.tolist(), point.tolist(), strict=True):
                pixels = order[i, : counts[j]]
                flat = images[i].reshape(c, h * w).copy()
                if len(pixels):
                    filled = linear_imputation(images[i], pixels)
                    if self.noise:
                        draws = imputation_noise(batch.seeds[i], c, len(pixels), j).numpy()
                        filled = filled + self.noise * draws
                    flat[:, pixels] = filled
                out.append(torch.from_numpy(flat.reshape(c, h, w)))
            return torch.stack(out).to(device=adapter.device, dtype=adapter.dtype)

        chunk = resolve_batch_size(self.batch_size, adapter.device, c * h * w * 4)
        logits = perturbed_logits(
            adapter, build, b, len(counts), batch_size=chunk, metric=self.name
        )
        curves = (logits.argmax(dim=-1) == target.cpu().view(b, 1)).double()
        fractions = torch.tensor(self.percentages, dtype=torch.float64) / 100
        return MetricResult(self.name, curves.mean(dim=1), curves, fractions)


def road(
    model: Any,
    x_batch: torch.Tensor,
    y_batch: Any,
    a_batch: Saliency,
    *,
    seeds: Sequence[int] | None = None,
    **params: Any,
) -> MetricResult:
    """Functional form of :class:`ROAD`: ``ROAD(**params)(model, x, y, a, seeds=seeds)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import road
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> road(m, torch.randn(2, 3, 32, 32), None, torch.rand(2, 4, 4),
        ...      percentages=(20, 60)).scores.shape
        torch.Size([2])
    """
    return ROAD.create(**params)(model, x_batch, y_batch, a_batch, seeds=seeds)
