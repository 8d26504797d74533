"""``xvit.explain``: the one-call entry point."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import ParameterError
from ._inputs import class_targets, prepare_inputs
from ._progress import Meter, Progress, current_display, format_duration, metering
from ._targets import SCORE_TARGET, TargetScore, is_score, masked_scores
from .explanation import Explanation
from .methods._base import Cost, Explainer, named_model_errors
from .methods._registration import get_method
from .models import get_adapter, model_lock, preserved_state

#: Images per forward when reading the clean logits, so memory does not grow with the batch.
LOGITS_CHUNK = 64

#: Images handed to a method at a time. Inputs stay where the caller keeps them (host memory
#: for images and CPU tensors) and move to the model's device one group at a time, so device
#: memory does not grow with the number of images. Every method's map of an image is
#: independent of the other images in its call, so grouping does not change results.
IMAGES_PER_CALL = 256

#: A call estimated to take longer than this (seconds, on this device) prints its estimate
#: and shows its progress unless ``progress=False``.
LONG_RUN_S = 15.0
#: Before announcing a long call, the forward is timed again on a batch that takes about this
#: share of the estimated time (at most :data:`LOGITS_CHUNK` images).
RETIME_SHARE = 0.02


def make_explainer(method: str | type[Explainer] | Explainer, **params: Any) -> Explainer:
    """An :class:`Explainer` from a name, a class, or an instance (then no params).

    Example:
        >>> import xvit
        >>> xvit.make_explainer("rollout", head_fusion="max")
        AttentionRollout(head_fusion='max', discard_ratio=0.0)
    """
    if isinstance(method, Explainer):
        if params:
            raise ParameterError(
                f"parameters {sorted(params)} were given with an already-built "
                f"{type(method).__name__}; pass them to its constructor instead"
            )
        return method
    return get_method(method).create(**params)


def explain(
    method: str | type[Explainer] | Explainer,
    model: Any,
    inputs: Any,
    target: Any = None,
    *,
    progress: bool | None = None,
    **params: Any,
) -> Explanation:
    """Explain a model's decision on one image or a batch.

    Args:
        method: A registered method name (see :func:`xvit.list_methods`), class or instance.
        model: A timm or HuggingFace ViT/DeiT classifier (or an adapter).
        inputs: A path, PIL image, H x W x 3 uint8 array, a list of these (each preprocessed
            with the model's own preprocessing), or a B x C x H x W tensor taken as already
            preprocessed. A tensor on another device or of another floating dtype than the
            model is moved and cast to the model's; the results come back on its device.
        target: None (the predicted class); a class index or class name for every image;
            or one per image (indices and names may be mixed). Names come from the model
            (HF ``config.id2label``; timm ``pretrained_cfg["label_names"]`` or its ImageNet
            head): exact matches first, then case-insensitive; a synonym of a label counts
            (``"tabby cat"`` for ``"tabby, tabby cat"``); or a callable
            ``score(logits) -> scores`` from the model's B' x C logits (float32) to one
            score per image (B',), to explain something other than one class: a weighted sum
            of logits, or, on a backbone whose output is an embedding, its cosine similarity
            to a reference embedding. Gradient methods (GradMask's q/k/v gradients, Grad-CAM,
            GAE) differentiate this score instead of the target logit, so it must be
            differentiable in the logits. Masked-scoring methods (GradMask, RISE, ViT-CX)
            weight each masked copy of an image by this score of the copy's logits instead
            of the target-class softmax probability (ViT-CX's causal score is formed from
            these scores the same way); the score is used as returned, not passed through a
            softmax or clipped, so a score that can be negative can give negative map
            values. The masked copies of different images are scored together in batches,
            so the callable sees B' rows that may belong to several images and must score
            each row from that row alone (no batch statistics, no per-image references).
            Attention-only methods (attention, rollout) and random ignore any target. The
            result has ``targets`` -1, ``class_names`` the callable's ``__name__`` (or
            "custom score" for a lambda) and ``probabilities`` its score of each clean
            image. A callable returning NaN or inf, a non-tensor, or not one score per row
            raises :class:`~xvit.InvalidInputError`.
        progress: Progress on stderr, image by image (fractions of an image for the methods
            that score masks): a bar on a terminal, plain lines every tenth of the work
            otherwise. None (default) shows it only for a call estimated to take more than
            :data:`LONG_RUN_S` seconds, after one line with the estimate (``xvit: rise on 1
            image: 4000 forwards, about 30 min on cpu``), from the method's declared
            :meth:`~xvit.Explainer.cost` and the time of the clean forward this call makes
            anyway. True always shows progress; False never writes anything. Inside a
            benchmark run, progress goes to the run's display instead. Maps do not depend on it.
        **params: The method's parameters; unknown names raise an error listing valid ones.

    Returns:
        An :class:`Explanation` whose ``map`` is B x h x w on the input's device.

    Raises:
        XvitError: Every misuse, as a subclass: :class:`~xvit.InvalidInputError` (inputs,
            targets), :class:`~xvit.ParameterError`, :class:`~xvit.UnknownNameError`,
            :class:`~xvit.UnsupportedModelError`, :class:`~xvit.CaptureError`, and
            :class:`~xvit.ModelOutputError` when the model raises or returns NaN or inf
            during the call (the model's own exception is chained as its cause). The model
            is left as it was in every case.

    The method runs through its guarded :meth:`~xvit.Explainer.attribute` (lock, eval mode,
    the model's state restored, checked maps), one group of at most
    :data:`IMAGES_PER_CALL` images at a time.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5, depth=2,
        ...                       img_size=48, patch_size=16)
        >>> e = xvit.explain("gradmask", m, torch.randn(1, 3, 48, 48), target=2)
        >>> e.map.shape, e.targets.tolist()
        (torch.Size([1, 3, 3]), [2])
        >>> def margin(logits):  # class 2 against class 0, one score per row
        ...     return logits[:, 2] - logits[:, 0]
        >>> e = xvit.explain("gradmask", m, torch.randn(1, 3, 48, 48), target=margin)
        >>> e.targets.tolist(), e.class_names
        ([-1], ['margin'])
    """
    if progress not in (None, True, False):
        raise ParameterError(
            f"progress must be None (only for long calls), True or False, got {progress!r}"
        )
    explainer = make_explainer(method, **params)
    adapter = get_adapter(model)
    out_device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    x, images = prepare_inputs(inputs, adapter, to_device=False)
    with model_lock(adapter.model), preserved_state(adapter.model), ExitStack() as stack:
        names = adapter.class_names()
        goals = _Goals.of(target, len(x), adapter.num_classes, names)
        maps, targets, probs, class_names = [], [], [], []
        meter: Meter | None = None
        for start in range(0, len(x), IMAGES_PER_CALL):
            # each group of images goes to the model's device once, for its clean forward
            # and its explanation
            part = x[start : start + IMAGES_PER_CALL].to(adapter.device)
            with named_model_errors(explainer):  # the clean forward, and the estimate
                logits, per_forward = timed_logits(adapter, part)
                goal, part_targets = goals.rows(start, logits)
                probs.append(masked_scores(logits, goal).to(out_device))
                if meter is None:
                    cost = explainer.cost(adapter.geometry, (int(x.shape[-2]), int(x.shape[-1])))
                    display = current_display()
                    if display is None:
                        display = _display(explainer, adapter, x, cost, per_forward, progress)
                        stack.callback(display.close)
                    meter = stack.enter_context(metering(display, cost.passes))
            with meter.part(len(part)):
                out = explainer.attribute(adapter, part, goal)
            maps.append(out.to(out_device))
            targets.append(part_targets.to(out_device))
            class_names += goals.names(part_targets, names, adapter)
    return Explanation(
        map=torch.cat(maps).detach(),
        method=explainer.name,
        targets=torch.cat(targets),
        probabilities=torch.cat(probs),
        params=explainer.params(),
        input_size=(int(x.shape[-2]), int(x.shape[-1])),
        inputs=x.detach().to(out_device),
        images=images,
        class_names=class_names,
    )


def explain_maps(
    explainer: Explainer, adapter: Any, x: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The maps of ``x`` (on the model's device) for class ``target`` (B,), without the clean
    forward :func:`explain` runs for its probabilities and default targets: for a caller
    that knows both already (the benchmark, whose explanation time then counts only the
    method's own work). Groups of :data:`IMAGES_PER_CALL` images report to the current
    progress display, if any."""
    with model_lock(adapter.model), preserved_state(adapter.model):
        cost = explainer.cost(adapter.geometry, (int(x.shape[-2]), int(x.shape[-1])))
        display = current_display() or Progress(len(x), desc="", enabled=False)
        with metering(display, cost.passes) as meter:
            parts = []
            for start in range(0, len(x), IMAGES_PER_CALL):
                stop = start + IMAGES_PER_CALL
                with meter.part(len(x[start:stop])):
                    parts.append(explainer.attribute(adapter, x[start:stop], target[start:stop]))
    return torch.cat(parts)


@dataclass(frozen=True)
class _Goals:
    """What :func:`explain` explains, resolved once for all its images: a score function,
    class indices, or (``fixed`` None) each image's predicted class."""

    fixed: torch.Tensor | TargetScore | None

    @classmethod
    def of(cls, target: Any, n: int, num_classes: int, names: Any) -> _Goals:
        if is_score(target):
            return cls(TargetScore(target))
        if target is None:
            return cls(None)
        return cls(class_targets(target, n, num_classes, names))

    def rows(
        self, start: int, logits: torch.Tensor
    ) -> tuple[torch.Tensor | TargetScore, torch.Tensor]:
        """The goal of the images from ``start`` whose clean logits are ``logits``, and
        their entries of ``Explanation.targets``."""
        n = logits.shape[0]
        if isinstance(self.fixed, TargetScore):
            return self.fixed, torch.full((n,), SCORE_TARGET, dtype=torch.long)
        if self.fixed is None:
            goal = logits.argmax(dim=-1)
        else:
            goal = self.fixed[start : start + n].to(logits.device)
        return goal, goal

    def names(self, targets: torch.Tensor, names: Any, adapter: Any) -> list[str]:
        """The class name of each target (the score function's name for a score)."""
        if isinstance(self.fixed, TargetScore):
            return [self.fixed.name] * len(targets)
        return [names[t] if names else adapter.class_name(t) for t in targets.tolist()]


def timed_logits(adapter: Any, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The clean logits of ``x`` (read in chunks of :data:`LOGITS_CHUNK` on the model's
    device) and the seconds they took per image: the measure of this device's speed that
    :func:`explain`'s estimate uses."""
    device = adapter.device
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        logits = torch.cat([adapter.logits(part.to(device)) for part in x.split(LOGITS_CHUNK)])
    _sync(device)
    return logits, (time.perf_counter() - start) / max(len(x), 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _display(
    explainer: Explainer,
    adapter: Any,
    x: torch.Tensor,
    cost: Cost,
    per_forward: float,
    progress: bool | None,
) -> Progress:
    """The progress display of one call, after the estimate line when the call is long.

    The clean forward of a few images overstates the time per image of the methods' large
    batches (and a first forward includes one-off set-up costs), so a call that looks long
    is timed once more on a batch of copies of its first image, sized to take about
    :data:`RETIME_SHARE` of the estimate, before it is announced; the faster time counts.
    """
    n = len(x)
    seconds = cost.seconds(per_forward, n)
    long = progress is not False and seconds > LONG_RUN_S
    if long:
        size = int(min(LOGITS_CHUNK, max(1, RETIME_SHARE * seconds / max(per_forward, 1e-9))))
        probe = x[:1].expand(size, *x.shape[1:])
        per_forward = min(per_forward, timed_logits(adapter, probe)[1])
        seconds = cost.seconds(per_forward, n)
        long = seconds > LONG_RUN_S
    display = Progress(n, desc=f"xvit {explainer.name}", enabled=progress is True or long)
    if long:
        images = "1 image" if n == 1 else f"{n} images"
        display.write(
            f"xvit: {explainer.name} on {images}: {cost.describe(n)}, about "
            f"{format_duration(seconds)} on {adapter.device}"
        )
    return display
