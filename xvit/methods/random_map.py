"""A uniform-random saliency map: the floor every real method must beat."""

from __future__ import annotations

from typing import ClassVar

import torch

from .._constraints import Spec
from .._seeds import SEED, content_seed, generator, resolve_seed
from .._targets import Target
from ..models._base import Geometry, ModelAdapter
from ._base import Cost, Explainer
from ._registration import register_method


@register_method
class RandomMap(Explainer):
    """Uniform random patch scores, independent of the model and the image.

    Each image gets an h x w map (the model's patch grid) of independent U[0, 1) draws from a
    generator seeded with ``seed`` and a hash of that image's values
    (:func:`xvit._seeds.content_seed`): a map does not depend on the batch the image is in,
    the same image and seed give the same map, and different images get independent maps.
    (The benchmark runner also passes every image its own seed.)
    It is the sanity floor of the benchmark: a method that does not beat it on insertion,
    deletion and the pointing game explains nothing.

    Args:
        seed: Seed of the random generator (default 0); None draws one from torch's global
            generator per call.

    References:
        The random baseline of the saliency sanity checks: J. Adebayo, J. Gilmer,
        M. Muelly, I. Goodfellow, M. Hardt, B. Kim, "Sanity Checks for Saliency Maps",
        NeurIPS 2018.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> a = xvit.explain("random", m, x, seed=7).map
        >>> b = xvit.explain("random", m, x[1:], seed=7).map
        >>> a.shape, bool(torch.equal(a[1], b[0])), bool(torch.equal(a[0], a[1]))
        (torch.Size([2, 4, 4]), True, False)
    """

    name = "random"
    summary = "uniform random patch scores (the sanity floor of the benchmark)"
    paper = "Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018 (random baseline)"
    family = "baseline"
    score_targets = True
    randomized = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {"seed": SEED}

    def __init__(self, *, seed: int | None = 0) -> None:
        self.seed = seed

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """No pass through the model."""
        return Cost()

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        gh, gw = adapter.geometry.grid(int(inputs.shape[-2]), int(inputs.shape[-1]))
        seed = resolve_seed(self.seed)
        maps = []
        for image in inputs.detach():
            values = image.float().cpu().contiguous().numpy().tobytes()
            maps.append(torch.rand(gh, gw, generator=generator(content_seed(seed, values))))
        return torch.stack(maps).to(inputs.device)
