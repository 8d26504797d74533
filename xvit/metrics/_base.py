"""The contract every metric follows, and the helpers metrics share.

:meth:`Metric.__call__` is the one way to score a batch, the same for every metric, and it is
final: it checks the batch once, brings it into shape (the model's adapter and targets, the
maps at input resolution, the ground truth as pixel masks, one seed per image) and hands it to
:meth:`Metric.score` as a :class:`Batch`. A metric implements that one step.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch

from .._configurable import Configurable
from .._constraints import OneOf, check_param
from .._errors import InvalidInputError, ParameterError
from .._forward import backing_off
from .._heap import settle_heap
from .._inputs import resolve_targets
from .._seeds import derive_seed, resolve_seed
from ..explanation import Explanation
from ..methods import Explainer, get_method
from ..models import ModelAdapter, get_adapter, model_lock, preserved_state
from ._boxes import Boxes, box_masks, require_boxes

#: Saliency maps as a metric takes them: a B x h x w tensor or an Explanation.
Saliency = torch.Tensor | Explanation

#: Interpolation modes for bringing a saliency map to the input size.
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")

#: The constraint of every ``upsample`` parameter.
UPSAMPLE = OneOf(*UPSAMPLE_MODES)


@dataclass
class MetricResult:
    """Per-image scores of one metric on one batch.

    Attributes:
        metric: Registry name of the metric.
        scores: (B,) float64 scores on the CPU; NaN where the score is undefined (for example
            an image without a ground-truth box).
        curves: B x S curve values (insertion/deletion probabilities), or None.
        fractions: (S,) x positions of the curve points (fraction of pixels), or None.

    Example:
        >>> import torch
        >>> MetricResult("pointing_game", torch.tensor([1.0, float("nan"), 0.0])).mean()
        0.5
    """

    metric: str
    scores: torch.Tensor
    curves: torch.Tensor | None = None
    fractions: torch.Tensor | None = None

    def mean(self) -> float:
        """Mean over the images whose score is defined (NaN when none is)."""
        return nanmean(self.scores)


def nanmean(scores: torch.Tensor) -> float:
    """Mean of the non-NaN entries; NaN when there are none.

    Example:
        >>> import torch
        >>> nanmean(torch.tensor([1.0, float("nan"), 2.0])), nanmean(torch.tensor([float("nan")]))
        (1.5, nan)
    """
    valid = scores[~torch.isnan(scores)]
    return float(valid.mean()) if valid.numel() else math.nan


@dataclass(frozen=True)
class Batch:
    """A batch as :meth:`Metric.score` receives it: checked and brought into shape once.

    Attributes:
        x: B x C x H x W preprocessed images: on the model's device and in its dtype for a
            metric that runs the model, else as given.
        saliency: B x H x W float maps at the input size, brought there with the metric's
            ``upsample`` mode, on ``x``'s device.
        seeds: One integer seed per image.
        adapter: The model's adapter; None for a metric that does not run the model.
        target: (B,) long target classes on ``x``'s device (``y_batch``, or the model's
            prediction where it is None); None for a metric that does not run the model.
        boxes: B x H x W boolean ground-truth masks on the CPU for a metric that needs
            ground truth, else None.
        explainer: The method that made the maps, for a metric that explains again
            (``needs_explainer``: on randomised models, on perturbed inputs), else None.

    Example:
        >>> import torch
        >>> batch = Batch(torch.zeros(2, 3, 8, 16), torch.rand(2, 8, 16), seeds=(0, 1))
        >>> batch.size, batch.adapter is None
        ((8, 16), True)
    """

    x: torch.Tensor
    saliency: torch.Tensor
    seeds: tuple[int, ...]
    adapter: ModelAdapter | None = None
    target: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    explainer: Explainer | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the inputs."""
        return int(self.x.shape[-2]), int(self.x.shape[-1])


class Metric(Configurable, ABC):
    """Base class of evaluation metrics.

    A metric is configured by keyword arguments to ``__init__``, each checked against the
    class's ``parameter_constraints`` table, and scores a batch with
    ``metric(model, x_batch, y_batch, a_batch, s_batch, *, seeds=None)``: the model (or
    adapter), B preprocessed images, B target classes, B saliency maps at any resolution,
    and for localisation metrics the ground truth. It returns a :class:`MetricResult` with
    one score per image; the names follow Quantus (``x_batch``, ``y_batch``, ``a_batch``,
    ``s_batch``).

    That call is the same for every metric and final: it checks the batch once and passes it
    to :meth:`score`, the one step a metric implements, as a :class:`Batch`:

    - ``x_batch`` must be B x C x H x W and ``a_batch`` one finite map per image (B x h x w,
      or an :class:`~xvit.Explanation`); the maps are brought to H x W with
      :meth:`~xvit.Explanation.upsample` in the metric's ``upsample`` mode.
    - A metric that runs the model (``needs_model``) gets its adapter, the images checked
      against it and moved to its device and dtype, and ``y_batch`` resolved to class
      indices (None: the model's prediction); the model's lock is held and the model left as
      it was.
    - A metric that needs ground truth (``needs_boxes``) requires ``s_batch`` (per image a
      list of (x0, y0, x1, y1) boxes in input pixels, or a B x H x W boolean mask) and gets
      it as pixel masks.
    - ``seeds``: one integer per image fixes each image's random draws, so that scores do not
      depend on how images are batched. None follows xvit's seed rule
      (:mod:`xvit._seeds`): image ``i`` of the batch gets ``derive_seed(s, i)``, where ``s``
      is the metric's ``seed`` (None: one drawn from torch's global generator) for a
      randomized metric, else 0.

    A metric written before ``score`` existed that overrides ``__call__`` still works, with a
    :class:`DeprecationWarning` when its class is defined; its override runs without these
    checks.

    Attributes:
        name: Registry name.
        summary: One line for listings.
        paper: The paper that defines the metric.
        higher_is_better: Whether a larger score means a better explanation.
        needs_model: Whether the metric runs the model.
        needs_boxes: Whether the metric needs ground-truth boxes (``s_batch``).
        needs_explainer: Whether the metric runs the explanation method again (then
            ``__call__`` needs ``explainer=``, the method that made the maps).
        curve: Whether the score is the area under a curve: the result carries ``curves``
            and ``fractions``, and the metric has ``counts(height, width)``, the pixels
            changed at each point (the benchmark averages and plots the curves of such
            metrics).
        short_name: A short name for crowded figure cells (empty: the name).
        expensive: Whether scoring costs far more than explaining (many extra forwards, or
            re-running the method): ``xvit bench`` and ``xvit demo`` then run it only when
            asked (by name, or ``--metrics all``).
        cost: One sentence on what the metric costs per image, for the docs and listings.
        randomized: Whether it may draw random numbers (then it takes a ``seed``).
        upsample: How maps reach the input size (``"nearest"`` unless the metric takes an
            ``upsample`` parameter).

    Example:
        >>> import torch
        >>> from xvit.metrics import Metric, MetricResult
        >>> class Peak(Metric):
        ...     name = "peak-example"
        ...     def score(self, batch):
        ...         return MetricResult(self.name, batch.saliency.flatten(1).amax(1).double())
        >>> maps = torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]]])
        >>> Peak()(None, torch.zeros(2, 3, 8, 8), [0, 1], maps).scores
        tensor([3., 2.], dtype=torch.float64)
    """

    higher_is_better: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    needs_boxes: ClassVar[bool] = False
    needs_explainer: ClassVar[bool] = False
    curve: ClassVar[bool] = False
    short_name: ClassVar[str] = ""
    expensive: ClassVar[bool] = False
    cost: ClassVar[str] = ""
    upsample: str = "nearest"
    #: The seed of a randomized metric (its ``seed`` parameter).
    seed: int | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.randomized and "seed" not in cls.param_names():
            raise TypeError(f"{cls.__name__} is randomized but its __init__ takes no seed")
        if "__call__" in vars(cls):
            warnings.warn(
                f"{cls.__qualname__} overrides Metric.__call__, which is final: implement "
                f"score(batch) instead, and Metric.__call__ checks the batch for it (the "
                f"override still runs, without those checks)",
                DeprecationWarning,
                stacklevel=3,
            )
            if getattr(cls.score, "__isabstractmethod__", False):
                cls.score = _overridden_call  # type: ignore[method-assign]

    @final
    def __call__(
        self,
        model: Any,
        x_batch: torch.Tensor,
        y_batch: Any,
        a_batch: Saliency,
        s_batch: Boxes | None = None,
        *,
        seeds: Sequence[int] | None = None,
        explainer: Explainer | str | None = None,
    ) -> MetricResult:
        """Score a batch (see the class docstring): check it, shape it, call :meth:`score`.

        ``explainer`` (an :class:`~xvit.Explainer` or a registry name) is the method that made
        ``a_batch``; a metric that explains again (``needs_explainer``) requires it, the others
        ignore it.

        Raises:
            UnsupportedModelError: The metric runs the model and ``model`` is not one xvit
                supports.
            InvalidInputError: Malformed images, maps, targets or ground truth, or ground
                truth missing for a metric that needs it.
            ParameterError: ``seeds`` is not one integer per image, or ``explainer`` is missing
                for a metric that needs it.
        """
        method = self._explainer(explainer)
        adapter = get_adapter(model) if self.needs_model else None
        check_batch(x_batch, a_batch)
        if self.needs_boxes:
            require_boxes(s_batch, self.name)
        x = x_batch
        if adapter is not None:
            adapter.check_input(x_batch)
            x = x_batch.detach().to(device=adapter.device, dtype=adapter.dtype)
        b, _c, h, w = x.shape
        seed = self.seed if self.randomized else 0
        image_seeds = per_image_seeds(seeds, b, seed)
        saliency = saliency_at(a_batch, (h, w), self.upsample).to(x.device)
        boxes = box_masks(s_batch, (h, w), b) if self.needs_boxes else None
        if adapter is None:
            return self.score(Batch(x, saliency, image_seeds, boxes=boxes, explainer=method))
        settle_heap()  # the scoring forwards reuse freed memory instead of faulting it in
        with model_lock(adapter.model), preserved_state(adapter.model):
            target = model_targets(adapter, x, y_batch)
            batch = Batch(x, saliency, image_seeds, adapter, target, boxes, method)
            # an "auto" batch_size shrinks on out-of-memory errors (xvit._forward)
            auto = getattr(self, "batch_size", None) or 1
            return backing_off(lambda: self.score(batch), adapter.device, auto, self.name)

    def _explainer(self, explainer: Explainer | str | None) -> Explainer | None:
        """The method a metric that explains again runs (None for the others)."""
        if not self.needs_explainer:
            return None
        if explainer is None:
            raise ParameterError(
                f"metric {self.name!r} explains again (on randomised models or perturbed "
                f"inputs): pass the method that made the maps, "
                f"{self.name}(model, x, y, maps, explainer='gradmask')"
            )
        if isinstance(explainer, str):
            return get_method(explainer).create()
        if not isinstance(explainer, Explainer):
            raise ParameterError(
                f"explainer must be an xvit.Explainer or a method name, got "
                f"{type(explainer).__name__}"
            )
        return explainer

    @abstractmethod
    def score(self, batch: Batch) -> MetricResult:
        """The scores of a checked batch: one per image (NaN where undefined).

        Runs inside :meth:`__call__`, with the model's lock held and the model in eval mode
        for a metric that runs the model.
        """

    def footnote(self, input_size: tuple[int, int]) -> str:
        """A line for the foot of a results table (``""`` for none): a setting the scores
        depend on, as it applies to inputs of ``input_size`` (H, W)."""
        return ""

    @staticmethod
    def aggregate(scores: torch.Tensor) -> float:
        """One number for many per-image scores: the mean over the defined ones."""
        return nanmean(scores)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _overridden_call(self: Metric, batch: Batch) -> MetricResult:
    """The ``score`` of a metric that overrides ``__call__`` instead (deprecated)."""
    raise NotImplementedError(f"{type(self).__name__} overrides __call__ and has no score(batch)")


def saliency_at(a_batch: Saliency, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """B x H x W float maps at ``size``, upsampled with :meth:`Explanation.upsample`.

    Raises:
        InvalidInputError: The maps are not B x h x w, or hold NaN or infinite values.
    """
    check_param("", "upsample", mode, UPSAMPLE)
    if isinstance(a_batch, Explanation):
        maps = a_batch.map
        explanation = a_batch
    else:
        if not isinstance(a_batch, torch.Tensor):
            raise InvalidInputError(
                f"a_batch must be a B x h x w tensor of saliency maps or an Explanation, got "
                f"{type(a_batch).__name__}"
            )
        maps = a_batch
        b = maps.shape[0] if maps.dim() else 0
        explanation = Explanation(
            map=maps,
            method="",
            targets=torch.zeros(b, dtype=torch.long),
            probabilities=torch.zeros(b),
            params={},
            input_size=size,
        )
    if maps.dim() != 3 or maps.shape[0] == 0:
        raise InvalidInputError(
            f"saliency maps must be B x h x w with B >= 1, got shape {tuple(maps.shape)}; add a "
            f"batch dimension with .unsqueeze(0) for one map"
        )
    if not torch.isfinite(maps).all():
        raise InvalidInputError("the saliency maps contain NaN or infinite values")
    return explanation.upsample(size, mode=mode)


def check_batch(x_batch: Any, a_batch: Saliency) -> None:
    """x_batch is B x C x H x W and there is one map per image."""
    if not isinstance(x_batch, torch.Tensor) or x_batch.dim() != 4:
        shape = tuple(x_batch.shape) if isinstance(x_batch, torch.Tensor) else type(x_batch)
        raise InvalidInputError(f"x_batch must be a preprocessed B x C x H x W tensor, got {shape}")
    maps = a_batch.map if isinstance(a_batch, Explanation) else a_batch
    if isinstance(maps, torch.Tensor) and maps.dim() >= 1 and maps.shape[0] != x_batch.shape[0]:
        raise InvalidInputError(
            f"got {maps.shape[0]} saliency maps for {x_batch.shape[0]} images; pass one map "
            f"per image"
        )


def per_image_seeds(seeds: Sequence[int] | None, batch: int, seed: int | None) -> tuple[int, ...]:
    """One integer seed per image: ``seeds`` checked, or for None xvit's seed rule: image
    ``i`` gets ``derive_seed(resolve_seed(seed), i)``.

    Example:
        >>> per_image_seeds([7, 3], 2, 0)
        (7, 3)
        >>> from xvit._seeds import derive_seed
        >>> per_image_seeds(None, 2, 5) == (derive_seed(5, 0), derive_seed(5, 1))
        True
    """
    if seeds is None:
        base = resolve_seed(seed)
        return tuple(derive_seed(base, i) for i in range(batch))
    values = list(seeds)
    if len(values) != batch or any(isinstance(s, bool) or not isinstance(s, int) for s in values):
        raise ParameterError(f"seeds must be {batch} integers, one per image, got {seeds!r}")
    return tuple(values)


def model_targets(adapter: ModelAdapter, x: torch.Tensor, y_batch: Any) -> torch.Tensor:
    """(B,) long targets on ``x``'s device: ``y_batch`` resolved against the model's classes,
    or for None the model's prediction on ``x``."""
    if y_batch is None:
        with torch.inference_mode():
            logits = adapter.logits(x, check_finite=False)
    else:
        logits = torch.empty(x.shape[0], adapter.num_classes, device=x.device)
    return resolve_targets(y_batch, logits, adapter.num_classes).to(x.device)
