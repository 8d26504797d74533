"""The work of one batch: its images preprocessed once with their targets, boxes and seeds,
then explained and scored by one method at a time, one record per image."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import InvalidInputError, ModelOutputError
from .._inputs import as_image
from .._progress import Progress, reporting_to
from ..api import explain_maps
from ..explanation import Explanation
from ..methods._base import Explainer
from ..metrics._base import Metric
from ..models import model_lock, preserved_state
from ..models._base import ModelAdapter
from ._store import to_json_number


def image_seed(seed: int, image_id: str) -> int:
    """A 32-bit seed for one image, stable across runs, batches and processes.

    Example:
        >>> image_seed(0, "img1") == image_seed(0, "img1")  # stable
        True
        >>> image_seed(0, "img1") == image_seed(1, "img1")  # another run seed, another seed
        False
    """
    digest = hashlib.sha256(f"{seed}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class PreparedBatch:
    """One batch of dataset samples, ready for every method.

    Attributes:
        samples: The samples (``image``, ``label``, ``boxes``, ``id``).
        x: The preprocessed images, B x C x H x W on the model's device.
        labels: The dataset's class of each image.
        targets: The class each method explains (the label, or the clean prediction).
        predictions: The model's class on each clean image.
        probabilities: The model's softmax on each clean image, B x classes.
        boxes: Each image's boxes in model-input pixels.
        seeds: Each image's seed, from the run's seed and the image id.
    """

    samples: Sequence[Any]
    x: torch.Tensor
    labels: list[int]
    targets: torch.Tensor
    predictions: torch.Tensor
    probabilities: torch.Tensor
    boxes: list[Any]
    seeds: list[int]

    @classmethod
    def prepare(
        cls, adapter: ModelAdapter, samples: Sequence[Any], target: str, seed: int
    ) -> PreparedBatch:
        """Preprocess ``samples``, run the model once on the clean images, and fix each
        image's target (``"label"`` or ``"prediction"``) and seed."""
        prep = adapter.preprocessing
        images = [as_image(s.image) for s in samples]
        x = torch.stack([prep(img) for img in images])
        x = x.to(device=adapter.device, dtype=adapter.dtype)
        adapter.check_input(x)
        with torch.inference_mode():
            logits = explain_logits(adapter, x)
        probabilities = logits.float().softmax(-1)
        predictions = probabilities.argmax(-1)
        labels = [_checked_label(s, adapter.num_classes) for s in samples]
        targets = (
            torch.tensor(labels, device=x.device) if target == "label" else predictions.clone()
        )
        boxes = [prep.transform_boxes(s.boxes, img.size) for s, img in zip(samples, images)]
        seeds = [image_seed(seed, s.id) for s in samples]
        return cls(samples, x, labels, targets, predictions, probabilities, boxes, seeds)

    def records(
        self,
        adapter: ModelAdapter,
        explainer: Explainer,
        metrics: Sequence[Metric],
        indices: Sequence[int],
        bar: Progress,
        on_maps: Callable[[Explanation], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Explain images ``indices`` with ``explainer`` (timed, metrics excluded), score the
        maps with every metric, and return one record per image.

        ``on_maps`` receives the maps (with the images' ids, targets and probabilities) as
        an :class:`~xvit.Explanation` before the metrics score them.

        A randomized method explains each image alone with the image's own seed, so that
        its map does not depend on the batch.
        """
        bar.set_label(explainer.name)
        sel = torch.tensor(list(indices), device=self.x.device)
        xs, ts = self.x[sel], self.targets[sel]
        _sync(adapter)
        t0 = time.perf_counter()
        with reporting_to(bar):  # each explain call moves the bar by its images
            if type(explainer).randomized:
                maps = torch.cat([self._seeded_map(adapter, explainer, i) for i in indices])
            else:
                maps = explain_maps(explainer, adapter, xs, ts)
        _sync(adapter)
        elapsed = time.perf_counter() - t0
        if on_maps is not None:
            on_maps(self.explanation(explainer, indices, maps))
        boxes = [self.boxes[i] for i in indices]
        seeds = [self.seeds[i] for i in indices]
        results = [
            metric(adapter, xs, ts, maps, boxes, seeds=seeds, explainer=explainer)
            if metric.needs_explainer
            else metric(adapter, xs, ts, maps, boxes, seeds=seeds)
            for metric in metrics
        ]
        return [
            {
                "id": self.samples[i].id,
                "method": explainer.name,
                "label": self.labels[i],
                "target": int(self.targets[i]),
                "prediction": int(self.predictions[i]),
                "probability": float(self.probabilities[i, self.targets[i]]),
                "time_s": elapsed / len(indices),
                "scores": {r.metric: to_json_number(float(r.scores[j])) for r in results},
                "curves": {
                    r.metric: [round(float(v), 6) for v in r.curves[j]]
                    for r in results
                    if r.curves is not None
                },
            }
            for j, i in enumerate(indices)
        ]

    def explanation(
        self, explainer: Explainer, indices: Sequence[int], maps: torch.Tensor
    ) -> Explanation:
        """``maps`` of images ``indices`` with their ids, targets and the model's clean
        probability of each target."""
        sel = torch.tensor(list(indices), device=self.x.device)
        targets = self.targets[sel]
        return Explanation(
            map=maps.detach().cpu(),
            method=explainer.name,
            targets=targets.cpu(),
            probabilities=self.probabilities[sel, targets].cpu(),
            params=explainer.params(),
            input_size=(int(self.x.shape[-2]), int(self.x.shape[-1])),
            ids=[str(self.samples[i].id) for i in indices],
        )

    def _seeded_map(self, adapter: ModelAdapter, explainer: Explainer, i: int) -> torch.Tensor:
        """The map of image ``i`` by ``explainer`` made with the image's own seed."""
        seeded = type(explainer).create(**{**explainer.params(), "seed": self.seeds[i]})
        return explain_maps(seeded, adapter, self.x[i : i + 1], self.targets[i : i + 1])


def _checked_label(sample: Any, num_classes: int) -> int:
    label = sample.label
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
        raise InvalidInputError(
            f"image {sample.id!r} has label {label!r}, not a class of this model "
            f"(0 .. {num_classes - 1}); check that the dataset matches the model"
        )
    return label


def explain_logits(adapter: ModelAdapter, x: torch.Tensor) -> torch.Tensor:
    """The clean logits of a batch, with the model in eval mode for the call."""
    with model_lock(adapter.model), preserved_state(adapter.model):
        logits = adapter.logits(x, check_finite=False)
    if not torch.isfinite(logits).all():
        raise ModelOutputError(
            "the model returned NaN or infinite logits on clean images; check the model and "
            "its preprocessing"
        )
    return logits


def _sync(adapter: ModelAdapter) -> None:
    if adapter.device.type == "cuda":
        torch.cuda.synchronize(adapter.device)
