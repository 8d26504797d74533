"""Max-sensitivity: how much the map changes when the input moves a little."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from .._constraints import Integer, Real, Spec
from .._seeds import SEED, generator
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency, saliency_at
from ._registration import register_metric


def uniform_perturbations(
    seed: int, shape: tuple[int, ...], samples: int, radius: float
) -> torch.Tensor:
    """samples x C x H x W float32 noise drawn uniformly from the L-infinity ball of
    ``radius`` (each value in [-radius, radius)), from a generator seeded with ``seed``.

    Example:
        >>> d = uniform_perturbations(0, (3, 4, 4), 2, 0.1)
        >>> d.shape, bool(d.abs().max() <= 0.1)
        (torch.Size([2, 3, 4, 4]), True)
    """
    draws = torch.rand(samples, *shape, generator=generator(seed))
    return (draws * 2 - 1) * radius


@register_metric
class SensitivityMax(Metric):
    """Max-sensitivity (Yeh, Hsieh, Suggala, Inouye, Ravikumar, NeurIPS 2019).

    Explains ``n_perturb_samples`` noisy copies ``x + d`` of each image again with the method
    that made the maps (``d`` uniform in the L-infinity ball of radius ``perturb_radius``, in
    the model's preprocessed units), for the same target, and reports the largest relative
    change ``||map(x + d) - map(x)|| / ||map(x)||`` (Frobenius norms at input resolution; a
    zero map counts as norm 1). Lower is better. ``a_batch`` must be the method's maps of
    ``x_batch``; the new maps are brought to the input size with the same ``upsample``.

    It equals ``captum.metrics.sensitivity_max(explain, x, perturb_func=...,
    perturb_radius=r, n_perturb_samples=n, target=y)`` when the perturbation function returns
    these draws (see :func:`uniform_perturbations`), and Quantus' ``MaxSensitivity`` with
    ``lower_bound=r``, ``nr_samples=n``, ``normalise=False`` and
    ``return_nan_when_prediction_changes=False`` (Quantus' defaults differ: radius 0.2, 200
    samples, maps divided by their maximum).

    Args:
        n_perturb_samples: Noisy copies per image (Captum's default 10).
        perturb_radius: Radius of the L-infinity ball (Captum's default 0.02).
        upsample: How maps reach the input size.
        batch_size: Noisy copies explained per call of the method.
        seed: Seed of the noise for calls without per-image ``seeds``.

    References:
        C.-K. Yeh, C.-Y. Hsieh, A. S. Suggala, D. I. Inouye, P. Ravikumar, "On the
        (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.

    Example:
        >>> import timm, torch, xvit
        >>> from xvit.metrics import SensitivityMax
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> maps = xvit.explain("gradcam", m, x, target=0).map
        >>> r = SensitivityMax(n_perturb_samples=3)(m, x, 0, maps, explainer="gradcam")
        >>> bool((r.scores >= 0).all()), SensitivityMax.needs_explainer
        (True, True)
    """

    name = "sensitivity_max"
    short_name = "sens-max"
    summary = "largest relative change of the map when the input is perturbed slightly"
    paper = "Yeh et al., On the (In)fidelity and Sensitivity of Explanations, NeurIPS 2019"
    cost = "runs the method again on n_perturb_samples (10 by default) noisy copies per image"
    higher_is_better = False
    needs_model = True
    needs_explainer = True
    expensive = True
    randomized = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "n_perturb_samples": Integer(low=1),
        "perturb_radius": Real(low=0, low_open=True),
        "upsample": UPSAMPLE,
        "batch_size": Integer(low=1),
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        n_perturb_samples: int = 10,
        perturb_radius: float = 0.02,
        upsample: str = "nearest",
        batch_size: int = 16,
        seed: int | None = 0,
    ) -> None:
        self.n_perturb_samples = n_perturb_samples
        self.perturb_radius = perturb_radius
        self.upsample = upsample
        self.batch_size = batch_size
        self.seed = seed

    def score(self, batch: Batch) -> MetricResult:
        """The max-sensitivity per image."""
        adapter, target, explainer = batch.adapter, batch.target, batch.explainer
        assert adapter is not None and target is not None and explainer is not None
        x = batch.x
        b, c, h, w = x.shape
        n = self.n_perturb_samples
        noise = torch.stack(
            [uniform_perturbations(s, (c, h, w), n, self.perturb_radius) for s in batch.seeds]
        ).to(device=x.device, dtype=x.dtype)
        noisy = (x.unsqueeze(1) + noise).flatten(0, 1)
        targets = target.repeat_interleave(n)
        maps = []
        for start in range(0, b * n, self.batch_size):
            part = slice(start, start + self.batch_size)
            found = explainer.attribute(adapter, noisy[part], targets[part]).detach()
            maps.append(saliency_at(found, (h, w), self.upsample).double().cpu())
        original = batch.saliency.detach().double().cpu().view(b, 1, h * w)
        changes = (torch.cat(maps).view(b, n, h * w) - original).norm(dim=2)
        norms = original.norm(dim=2)
        ratios = changes / torch.where(norms == 0, torch.ones_like(norms), norms)
        return MetricResult(self.name, ratios.amax(dim=1))


def sensitivity_max(
    model: Any,
    x_batch: torch.Tensor,
    y_batch: Any,
    a_batch: Saliency,
    *,
    explainer: Any,
    seeds: Sequence[int] | None = None,
    **params: Any,
) -> MetricResult:
    """Functional form of :class:`SensitivityMax`: ``SensitivityMax(**params)(model, x, y,
    a, seeds=seeds, explainer=explainer)``; ``explainer`` is the method (or its name) that
    made ``a_batch``.

    Example:
        >>> import timm, torch, xvit
        >>> from xvit.metrics.functional import sensitivity_max
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> maps = xvit.explain("gradcam", m, x, target=1).map
        >>> sensitivity_max(m, x, 1, maps, explainer="gradcam", n_perturb_samples=2).scores.shape
        torch.Size([1])
    """
    return SensitivityMax.create(**params)(
        model, x_batch, y_batch, a_batch, seeds=seeds, explainer=explainer
    )
