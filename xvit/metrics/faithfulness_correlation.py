"""Faithfulness correlation: does the saliency of random pixel subsets predict their effect?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from .._constraints import Flag, Integer, OneOf, Real, Spec
from .._errors import ParameterError
from .._forward import FORWARD_CONSTRAINTS, resolve_batch_size
from .._seeds import SEED, generator
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency
from ._perturbed import perturbed_logits, target_values
from ._registration import register_metric

#: Named baselines, as Quantus computes them per image over all its values.
BASELINES = ("black", "white", "mean")


def random_subsets(seed: int, num_pixels: int, subset_size: int, runs: int) -> torch.Tensor:
    """runs x subset_size flat pixel indices: for each run a subset drawn uniformly without
    replacement, by a generator seeded with the image's ``seed``.

    Example:
        >>> s = random_subsets(0, 16, 4, 3)
        >>> s.shape, all(len(set(row.tolist())) == 4 for row in s)
        (torch.Size([3, 4]), True)
    """
    gen = generator(seed)
    return torch.rand(runs, num_pixels, generator=gen).argsort(dim=1)[:, :subset_size]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson correlation of the rows of two B x R float64 tensors; NaN for a row
    that is constant in either.

    Example:
        >>> pearson(torch.tensor([[1.0, 2, 3], [1, 1, 1]]).double(),
        ...         torch.tensor([[2.0, 4, 7], [1, 2, 3]]).double()).round(decimals=4)
        tensor([0.9934,    nan], dtype=torch.float64)
    """
    da = a - a.mean(dim=1, keepdim=True)
    db = b - b.mean(dim=1, keepdim=True)
    norms = da.norm(dim=1) * db.norm(dim=1)
    r = (da * db).sum(dim=1) / norms
    return torch.where(norms > 0, r.clamp(-1.0, 1.0), torch.nan)


def baseline_values(x: torch.Tensor, baseline: str | float) -> torch.Tensor:
    """(B,) replacement value per image: its minimum (``"black"``), maximum (``"white"``)
    or mean over all channels and pixels, or the number given."""
    flat = x.flatten(1)
    if baseline == "black":
        return flat.amin(dim=1)
    if baseline == "white":
        return flat.amax(dim=1)
    if baseline == "mean":
        return flat.mean(dim=1)
    return torch.full((x.shape[0],), float(baseline), dtype=x.dtype, device=x.device)


@register_metric
class FaithfulnessCorrelation(Metric):
    """Faithfulness correlation (Bhatt, Weller, Moura, IJCAI 2020).

    For each of ``nr_runs`` random subsets of ``subset_size`` pixels, the pixels (all their
    channels) are set to the baseline; the score is the Pearson correlation, over the runs,
    between the saliency summed over the subset and the drop of the target's output
    ``f(x) - f(x with the subset replaced)``. Higher is better; NaN when either is constant.

    It is Quantus 0.6's ``FaithfulnessCorrelation`` (Pearson, ``perturb_baseline``,
    ``nr_runs``, logits unless ``softmax``) with pixels as the features: Quantus draws its
    subsets among the C x H x W values and sums the map broadcast over the channels; given
    subsets made of whole pixels the two are equal (the correlation does not change when
    the saliency sums are multiplied by C).

    Args:
        nr_runs: Random subsets per image (Quantus' default 100).
        subset_size: Pixels per subset (Quantus' default 224), fewer than the image has.
        perturb_baseline: The value the subset takes: ``"black"`` (the image's minimum
            over all values, default), ``"white"`` (its maximum), ``"mean"``, or a number,
            in the model's preprocessed units.
        softmax: Compare softmax probabilities instead of logits (default False, as Quantus).
        upsample: How maps reach the input size.
        batch_size: Model inputs (perturbed images) per forward pass, or "auto".
        seed: Seed of the subsets for calls without per-image ``seeds``; image ``i``'s
            subsets are :func:`random_subsets` of its seed.

    References:
        U. Bhatt, A. Weller, J. M. F. Moura, "Evaluating and Aggregating Feature-based Model
        Explanations", IJCAI 2020.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import FaithfulnessCorrelation
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = FaithfulnessCorrelation(nr_runs=8, subset_size=64)(
        ...     m, torch.randn(2, 3, 32, 32), None, torch.rand(2, 4, 4))
        >>> bool((r.scores.abs() <= 1).all())
        True
    """

    name = "faithfulness_correlation"
    short_name = "faith-corr"
    summary = "correlation of subset saliency with the output drop when the subset is removed"
    paper = "Bhatt et al., Evaluating and Aggregating Feature-based Model Explanations, IJCAI 2020"
    cost = "one forward per random subset (nr_runs, 100 by default) per image"
    higher_is_better = True
    needs_model = True
    expensive = True
    randomized = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "nr_runs": Integer(low=2),
        "subset_size": Integer(low=1),
        "perturb_baseline": (OneOf(*BASELINES), Real()),
        "softmax": Flag(),
        "upsample": UPSAMPLE,
        "batch_size": FORWARD_CONSTRAINTS["batch_size"],
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        nr_runs: int = 100,
        subset_size: int = 224,
        perturb_baseline: str | float = "black",
        softmax: bool = False,
        upsample: str = "nearest",
        batch_size: int | str = 64,
        seed: int | None = 0,
    ) -> None:
        self.nr_runs = nr_runs
        self.subset_size = subset_size
        self.perturb_baseline = perturb_baseline
        self.softmax = softmax
        self.upsample = upsample
        self.batch_size = batch_size
        self.seed = seed

    def score(self, batch: Batch) -> MetricResult:
        """The correlation per image."""
        adapter, target = batch.adapter, batch.target
        assert adapter is not None and target is not None  # needs_model
        x = batch.x
        b, c, h, w = x.shape
        if self.subset_size >= h * w:
            raise ParameterError(
                f"{self.name}: subset_size={self.subset_size} must be smaller than the "
                f"{h * w} pixels of an image; pass a smaller subset_size"
            )
        subsets = torch.stack(
            [random_subsets(s, h * w, self.subset_size, self.nr_runs) for s in batch.seeds]
        ).to(x.device)
        fill = baseline_values(x, self.perturb_baseline).view(b, 1, 1)

        def build(image: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
            image, run = image.to(x.device), run.to(x.device)
            flat = x[image].flatten(2).clone()
            index = subsets[image, run].unsqueeze(1).expand(-1, c, -1)
            flat.scatter_(2, index, fill[image].expand(-1, c, index.shape[-1]))
            return flat.view(-1, c, h, w)

        chunk = resolve_batch_size(self.batch_size, adapter.device, c * h * w * x.element_size())
        with torch.inference_mode():
            original = adapter.logits(x, check_finite=True).float().cpu()
        perturbed = perturbed_logits(
            adapter, build, b, self.nr_runs, batch_size=chunk, metric=self.name
        )
        drops = target_values(original, target, softmax=self.softmax).view(b, 1) - target_values(
            perturbed, target, softmax=self.softmax
        )
        saliency = batch.saliency.flatten(1).double()
        sums = saliency.gather(1, subsets.flatten(1)).view(b, self.nr_runs, -1).sum(dim=2)
        return MetricResult(self.name, pearson(sums.cpu(), drops))


def faithfulness_correlation(
    model: Any,
    x_batch: torch.Tensor,
    y_batch: Any,
    a_batch: Saliency,
    *,
    seeds: Sequence[int] | None = None,
    **params: Any,
) -> MetricResult:
    """Functional form of :class:`FaithfulnessCorrelation`:
    ``FaithfulnessCorrelation(**params)(model, x, y, a, seeds=seeds)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import faithfulness_correlation
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> faithfulness_correlation(m, torch.randn(2, 3, 32, 32), 0, torch.rand(2, 4, 4),
        ...                          nr_runs=5, subset_size=32).scores.shape
        torch.Size([2])
    """
    return FaithfulnessCorrelation.create(**params)(model, x_batch, y_batch, a_batch, seeds=seeds)
