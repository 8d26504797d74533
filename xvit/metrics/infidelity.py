"""Infidelity: how far the map, dotted with random input noise, misses the output change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from .._constraints import Flag, Integer, Real, Spec
from .._forward import FORWARD_CONSTRAINTS, resolve_batch_size
from .._seeds import SEED, generator
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency
from ._perturbed import perturbed_logits, target_values
from ._registration import register_metric


def gaussian_perturbations(
    seed: int, shape: tuple[int, ...], samples: int, std: float
) -> torch.Tensor:
    """samples x C x H x W float32 perturbations ``I ~ N(0, std^2)``, one value per pixel and
    channel, from a generator seeded with the image's ``seed``.

    Example:
        >>> gaussian_perturbations(0, (3, 4, 4), 2, 0.1).shape
        torch.Size([2, 3, 4, 4])
    """
    return torch.randn(samples, *shape, generator=generator(seed)) * std


def infidelity_from_sums(
    dots: torch.Tensor, drops: torch.Tensor, *, normalize: bool
) -> torch.Tensor:
    """(B,) infidelity from B x N float64 values of ``I . map`` and ``f(x) - f(x - I)``:
    the mean squared difference, after scaling the dots by the best ``beta`` (the least
    squares fit of the drops) when ``normalize``, as Captum and the authors' code do."""
    if normalize:
        num = (dots * drops).sum(dim=1)
        den = dots.pow(2).sum(dim=1)
        beta = torch.where(den != 0, num / den.where(den != 0, torch.ones_like(den)), 0.0)
        dots = dots * beta.unsqueeze(1)
    return (dots - drops).pow(2).mean(dim=1)


@register_metric
class Infidelity(Metric):
    """Infidelity (Yeh, Hsieh, Suggala, Inouye, Ravikumar, NeurIPS 2019).

    Draws ``n_perturb_samples`` perturbations ``I`` per image and scores the expected squared
    error between ``sum(I * map)`` and the output drop ``f(x) - f(x - I)`` of the target's
    logit (or probability). The perturbation is the paper's "noisy baseline" for images:
    Gaussian noise ``I ~ N(0, noise_std^2)``, independent per pixel and channel, in the
    model's preprocessed units (pixel noise, not patches); the map (one value per pixel)
    weighs every channel of its pixel. With ``normalize`` (default) the map is first scaled
    by the least-squares ``beta``, as in the authors' code and Captum's ``normalize=True``,
    so that the score does not depend on the map's scale. Lower is better.

    It equals ``captum.metrics.infidelity(forward, perturb, x, map, target=y,
    n_perturb_samples=n, normalize=normalize)`` when Captum's ``perturb_func`` returns these
    draws (see :func:`gaussian_perturbations`) and ``forward`` gives the logits.

    Args:
        n_perturb_samples: Perturbations per image (Captum's default is 10).
        noise_std: Standard deviation of the Gaussian noise (0.2, the authors' value).
        normalize: Scale the map by the best ``beta`` before the error.
        softmax: Use the target's softmax probability instead of its logit (the model
            output the authors' code uses).
        upsample: How maps reach the input size.
        batch_size: Model inputs (perturbed images) per forward pass, or "auto".
        seed: Seed of the noise for calls without per-image ``seeds``.

    References:
        C.-K. Yeh, C.-Y. Hsieh, A. S. Suggala, D. I. Inouye, P. Ravikumar, "On the
        (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics import Infidelity
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> r = Infidelity(n_perturb_samples=8)(m, torch.randn(2, 3, 32, 32), None,
        ...                                     torch.rand(2, 4, 4))
        >>> bool((r.scores >= 0).all()), Infidelity.higher_is_better
        (True, False)
    """

    name = "infidelity"
    short_name = "infid"
    summary = "squared error of the map's prediction of the output change under input noise"
    paper = "Yeh et al., On the (In)fidelity and Sensitivity of Explanations, NeurIPS 2019"
    cost = "one forward per perturbation (n_perturb_samples, 50 by default) per image"
    higher_is_better = False
    needs_model = True
    expensive = True
    randomized = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "n_perturb_samples": Integer(low=1),
        "noise_std": Real(low=0, low_open=True),
        "normalize": Flag(),
        "softmax": Flag(),
        "upsample": UPSAMPLE,
        "batch_size": FORWARD_CONSTRAINTS["batch_size"],
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        n_perturb_samples: int = 50,
        noise_std: float = 0.2,
        normalize: bool = True,
        softmax: bool = False,
        upsample: str = "nearest",
        batch_size: int | str = 64,
        seed: int | None = 0,
    ) -> None:
        self.n_perturb_samples = n_perturb_samples
        self.noise_std = noise_std
        self.normalize = normalize
        self.softmax = softmax
        self.upsample = upsample
        self.batch_size = batch_size
        self.seed = seed

    def score(self, batch: Batch) -> MetricResult:
        """The infidelity per image."""
        adapter, target = batch.adapter, batch.target
        assert adapter is not None and target is not None  # needs_model
        x = batch.x
        b, c, h, w = x.shape
        n = self.n_perturb_samples
        noise = torch.stack(
            [gaussian_perturbations(s, (c, h, w), n, self.noise_std) for s in batch.seeds]
        )

        def build(image: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
            step = noise[image, sample].to(device=x.device, dtype=x.dtype)
            return x[image.to(x.device)] - step

        chunk = resolve_batch_size(self.batch_size, adapter.device, c * h * w * x.element_size())
        with torch.inference_mode():
            original = adapter.logits(x, check_finite=True).float().cpu()
        perturbed = perturbed_logits(adapter, build, b, n, batch_size=chunk, metric=self.name)
        drops = target_values(original, target, softmax=self.softmax).view(b, 1) - target_values(
            perturbed, target, softmax=self.softmax
        )
        saliency = batch.saliency.detach().double().cpu().view(b, 1, 1, h, w)
        dots = (noise.double() * saliency).flatten(2).sum(dim=2)
        scores = infidelity_from_sums(dots, drops, normalize=self.normalize)
        return MetricResult(self.name, scores)


def infidelity(
    model: Any,
    x_batch: torch.Tensor,
    y_batch: Any,
    a_batch: Saliency,
    *,
    seeds: Sequence[int] | None = None,
    **params: Any,
) -> MetricResult:
    """Functional form of :class:`Infidelity`: ``Infidelity(**params)(model, x, y, a,
    seeds=seeds)``.

    Example:
        >>> import timm, torch
        >>> from xvit.metrics.functional import infidelity
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> infidelity(m, torch.randn(2, 3, 32, 32), 1, torch.rand(2, 4, 4),
        ...            n_perturb_samples=4).scores.shape
        torch.Size([2])
    """
    return Infidelity.create(**params)(model, x_batch, y_batch, a_batch, seeds=seeds)
