"""MPRT: the model-parameter randomisation sanity check. A map that explains the model should
change as the model's layers are randomised from the top; its similarity to the original
map should fall."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._constraints import Flag, OneOf, Spec
from .._errors import UnsupportedModelError
from .._seeds import SEED, derive_seed, resolve_seed
from ..methods import Explainer
from ..models import FamilyAdapter, ModelAdapter, get_adapter
from ._base import UPSAMPLE, Batch, Metric, MetricResult, Saliency, saliency_at
from ._randomisation import GRANULARITIES, CascadeStep, cascade, randomise
from ._registration import register_metric
from ._similarity import spearman, ssim

#: The similarity measures, by name.
SIMILARITIES = {"spearman": spearman, "ssim": ssim}


@dataclass
class MPRTResult(MetricResult):
    """An :class:`~xvit.metrics.MetricResult` whose ``curves`` (B x S) hold each image's
    similarity to its original map after each randomisation step.

    Attributes:
        steps: (S,) labels of the steps, in the order they were applied (``"head"``,
            ``"block 5"``, ..., ``"embeddings"``; or module names for ``layers="modules"``).
            Step k randomises its layers on top of the steps before it.

    Example:
        >>> import torch
        >>> r = MPRTResult("mprt", torch.tensor([0.5]), torch.tensor([[0.8, 0.2]]), None,
        ...                steps=("head", "block 0"))
        >>> dict(zip(r.steps, r.curves[0].tolist()))
        {'head': 0.800000011920929, 'block 0': 0.20000000298023224}
    """

    steps: tuple[str, ...] = ()


@register_metric
class MPRT(Metric):
    """Model-parameter randomisation test (Adebayo et al., NeurIPS 2018), cascading from the top.

    On a deep copy of the model (the model given is never changed), the layers are
    randomised step by step from the output down; after each step the method that made the
    maps explains the images again, with the same targets and, for a randomized method, the
    same seeds, and each new map is compared with the original one. A map that depends on
    what the model learned loses its similarity; one that does not (an edge detector, a
    map that ignores the model) keeps it. Lower is better.

    The steps (see :mod:`xvit.metrics._randomisation`): ``layers="blocks"`` randomises the
    head (the layers after the last block), then each transformer block from the last to
    the first, then the embeddings; ``layers="modules"`` randomises one layer at a time in
    Quantus' ``top_down`` order. A layer is a module with ``reset_parameters()``, reset with
    torch's generator seeded to ``seed + 1`` (Quantus' rule: ``seed`` reproduces the weights
    of Quantus' ``MPRT(seed=seed)``).

    Before comparing, each map (original and new, at input resolution) is taken in absolute
    value (``absolute``) and divided by its largest absolute value, as Quantus' defaults
    ``abs=True, normalise=True`` do, except that Quantus divides a whole batch by one
    maximum. SSIM compares the 2-D maps, as Adebayo et al.; Quantus' ``MPRT`` passes
    flattened maps to its ``ssim``, a 1-D SSIM along the raster order.

    The per-image score is the mean similarity over the steps (``reduce="mean"``, Quantus'
    ``return_average_correlation`` without its unrandomised entry) or the similarity after
    the last step, the fully randomised model (``reduce="last"``); steps where the similarity
    is undefined (a constant map) are left out of the mean. ``curves`` holds every step's
    similarity (B x S) and the result's ``steps`` their labels.

    Args:
        similarity: ``"spearman"`` (rank correlation over the pixels, default) or
            ``"ssim"`` (structural similarity, 7 x 7 window).
        layers: ``"blocks"`` (default) or ``"modules"``.
        reduce: ``"mean"`` (default) or ``"last"``.
        absolute: Compare absolute values of the maps (default True).
        reseed: False (default): a randomized method explains image i again with that
            image's seed (``seeds[i]``, the seed that made its map in the benchmark) at every
            step, so that only the model changes. True: with a fresh seed per step derived
            from it, so the method's own randomness changes too (the random baseline then has
            no similarity at any step).
        upsample: How maps reach input resolution (``"nearest"``, as the references).
        seed: Seed of the layers' random weights (default 0); None draws one per call.

    References:
        J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt, B. Kim, "Sanity Checks
        for Saliency Maps", NeurIPS 2018.

    Example:
        >>> import torch, xvit
        >>> from xvit.metrics import MPRT
        >>> m = xvit.load_model("xvit:digits-vit")
        >>> x = torch.randn(2, 3, 64, 64)
        >>> maps = xvit.explain("rollout", m, x, target=[3, 5])
        >>> r = MPRT()(m, x, [3, 5], maps, explainer="rollout")
        >>> r.curves.shape, r.steps[:2], r.steps[-1]
        (torch.Size([2, 8]), ('head', 'block 5'), 'embeddings')
    """

    name = "mprt"
    short_name = "mprt"
    summary = "similarity of the maps to the original ones as layers are randomised from the top"
    paper = "Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018"
    higher_is_better = False
    needs_model = True
    needs_explainer = True
    randomized = True
    expensive = True
    cost = (
        "re-runs the method once per randomisation step (L + 2 times per image with L blocks "
        "at layers='blocks', once per layer at 'modules') on a deep copy of the model"
    )
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "similarity": OneOf(*SIMILARITIES),
        "layers": OneOf(*GRANULARITIES),
        "reduce": OneOf("mean", "last"),
        "absolute": Flag(),
        "reseed": Flag(),
        "upsample": UPSAMPLE,
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        similarity: str = "spearman",
        layers: str = "blocks",
        reduce: str = "mean",
        absolute: bool = True,
        reseed: bool = False,
        upsample: str = "nearest",
        seed: int | None = 0,
    ) -> None:
        self.similarity = similarity
        self.layers = layers
        self.reduce = reduce
        self.absolute = absolute
        self.reseed = reseed
        self.upsample = upsample
        self.seed = seed

    def steps(self, model: Any) -> list[str]:
        """The labels of the randomisation steps on ``model`` (or its adapter), in order.

        Example:
            >>> import xvit
            >>> from xvit.metrics import MPRT
            >>> MPRT().steps(xvit.load_model("xvit:digits-vit"))  # doctest: +ELLIPSIS
            ['head', 'block 5', 'block 4', ..., 'block 0', 'embeddings']
        """
        adapter = model if isinstance(model, ModelAdapter) else get_adapter(model)
        return [s.label for s in self._cascade(adapter)]

    def _cascade(self, adapter: ModelAdapter) -> list[CascadeStep]:
        if not isinstance(adapter, FamilyAdapter):
            raise UnsupportedModelError(
                f"{self.name} finds the transformer blocks through a model family declaration "
                f"(xvit.FamilyAdapter); {type(adapter).__name__} has none: declare the family"
            )
        blocks = list(adapter.family.blocks(adapter.model))
        return cascade(adapter.model, blocks, self.layers)

    def footnote(self, input_size: tuple[int, int]) -> str:
        """What the MPRT column holds.

        Example:
            >>> from xvit.metrics import MPRT
            >>> print(MPRT().footnote((64, 64)))  # doctest: +NORMALIZE_WHITESPACE
            mprt: mean Spearman similarity of the maps to the originals over the cascade
            (head, blocks last to first, embeddings randomised in turn; weights seed 0), lower
            is better (see docs/metrics.md).
        """
        what = "mean" if self.reduce == "mean" else "last-step"
        sim = "Spearman" if self.similarity == "spearman" else "SSIM"
        order = (
            "head, blocks last to first, embeddings"
            if self.layers == "blocks"
            else "each layer, last to first"
        )
        return (
            f"{self.name}: {what} {sim} similarity of the maps to the originals over the "
            f"cascade ({order} randomised in turn; weights seed {self.seed}), lower is better "
            f"(see docs/metrics.md)."
        )

    def score(self, batch: Batch) -> MetricResult:
        """Randomise a copy step by step, explain again, compare with the original maps."""
        adapter, target, explainer = batch.adapter, batch.target, batch.explainer
        assert adapter is not None and target is not None and explainer is not None
        compare = SIMILARITIES[self.similarity]
        original = self._prepared(batch.saliency)
        weights_seed = resolve_seed(self.seed)
        copied = get_adapter(copy.deepcopy(adapter.model))
        steps = self._cascade(copied)
        values = []
        for k, step in enumerate(steps):
            randomise(copied.model, step, weights_seed)
            maps = self._explain_again(explainer, copied, batch, k)
            values.append(compare(original, self._prepared(maps)))
        curves = torch.stack(values, dim=1)
        scores = curves[:, -1].clone() if self.reduce == "last" else curves.nanmean(dim=1)
        return MPRTResult(self.name, scores, curves, None, tuple(s.label for s in steps))

    def _prepared(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps in absolute value (``absolute``), each divided by its largest magnitude."""
        maps = maps.double()
        if self.absolute:
            maps = maps.abs()
        peak = maps.abs().flatten(1).amax(1).view(-1, 1, 1)
        return torch.where(peak > 0, maps / peak.clamp_min(1e-300), maps)

    def _explain_again(
        self, explainer: Explainer, adapter: ModelAdapter, batch: Batch, step: int
    ) -> torch.Tensor:
        """B x H x W maps of the batch by ``explainer`` on the randomised copy."""
        x, target = batch.x, batch.target
        assert target is not None
        if type(explainer).randomized:
            parts = []
            for i, image_seed in enumerate(batch.seeds):
                seed = derive_seed(image_seed, f"mprt step {step}") if self.reseed else image_seed
                seeded = type(explainer).create(**{**explainer.params(), "seed": seed})
                parts.append(seeded.attribute(adapter, x[i : i + 1], target[i : i + 1]))
            maps = torch.cat(parts)
        else:
            maps = explainer.attribute(adapter, x, target)
        return saliency_at(maps.detach(), batch.size, self.upsample).to(x.device)


def mprt(
    model: Any,
    x_batch: torch.Tensor,
    y_batch: Any,
    a_batch: Saliency,
    *,
    explainer: Explainer | str,
    seeds: Sequence[int] | None = None,
    **params: Any,
) -> MetricResult:
    """Functional form of :class:`MPRT`:
    ``MPRT(**params)(model, x, y, a, seeds=seeds, explainer=explainer)``.

    Example:
        >>> import torch, xvit
        >>> from xvit.metrics.functional import mprt
        >>> m = xvit.load_model("xvit:digits-vit")
        >>> x = torch.randn(1, 3, 64, 64)
        >>> maps = xvit.explain("gae", m, x, target=[1])
        >>> r = mprt(m, x, [1], maps, explainer="gae", reduce="last")
        >>> bool(r.scores[0] == r.curves[0, -1])
        True
    """
    return MPRT.create(**params)(model, x_batch, y_batch, a_batch, seeds=seeds, explainer=explainer)
