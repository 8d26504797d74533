"""What a run is given, made concrete: methods and metrics from names, the model from its spec
on its device, and the first ``n`` samples of a dataset from its name and options."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .._devices import check_device
from .._errors import InvalidInputError, ParameterError
from .._settings import parse_spec
from ..api import make_explainer
from ..methods._base import Explainer
from ..methods._registration import get_method, method_registry
from ..metrics._base import Metric
from ..metrics._registration import get_metric, list_metrics
from ..models import get_adapter, load_model
from ..models._base import ModelAdapter

#: A dataset spec with options, for messages.
DATASET_EXAMPLE = "imagenet:root=/data/imagenet,index_file=subset.txt"


def _names(spec: Any, what: str) -> list[Any]:
    if isinstance(spec, str):
        items: list[Any] = [s.strip() for s in spec.split(",") if s.strip()]
        if not items:
            raise ParameterError(f"no {what} given; pass names separated by commas, or 'all'")
        return items
    if isinstance(spec, Sequence):
        return list(spec)
    return [spec]


def _once(names: Sequence[str], kind: str) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParameterError(f"{kind} {', '.join(map(repr, twice))} listed twice; list each once")


def resolve_methods(spec: Any) -> list[Explainer]:
    """Explainers from ``"all"`` (those that can run here), a comma list of names, or
    names/classes/instances.

    Example:
        >>> [type(e).__name__ for e in resolve_methods("gradcam,rollout")]
        ['GradCAM', 'AttentionRollout']
    """
    items = method_registry.usable() if spec == "all" else _names(spec, "methods")
    explainers = [
        make_explainer(item if isinstance(item, Explainer) else get_method(item)) for item in items
    ]
    _once([e.name for e in explainers], "method")
    return explainers


def resolve_metrics(spec: Any) -> list[Metric]:
    """Metrics from ``"default"`` (every registered metric that is not ``expensive``),
    ``"all"`` (every one), a comma list of names, or names/classes/instances.

    Example:
        >>> [m.name for m in resolve_metrics("insertion,pointing_game")]
        ['insertion', 'pointing_game']
    """
    if spec == "all":
        items: Any = list_metrics()
    elif spec == "default":
        items = [name for name in list_metrics() if not get_metric(name).expensive]
    else:
        items = _names(spec, "metrics")
    out = [item if isinstance(item, Metric) else get_metric(item).create() for item in items]
    _once([m.name for m in out], "metric")
    return out


def load_adapter(model: Any, device: str | torch.device | None) -> tuple[ModelAdapter, str]:
    """The adapter of ``model`` (a spec for :func:`xvit.load_model`, a model or an adapter)
    on ``device`` (None: where it is), and how the run describes the model."""
    if device is not None:
        check_device(device)
    if isinstance(model, str):
        net = load_model(model, device=device or "cpu")
        return get_adapter(net), model
    adapter = get_adapter(model)
    if device is not None:
        adapter.model.to(device)
    return adapter, f"{type(adapter.model).__module__}.{type(adapter.model).__name__}"


def load_samples(dataset: Any, n: int | None) -> tuple[list[Any], str]:
    """The first ``n`` samples and a description of where they came from.

    ``dataset`` is a sequence of samples, or a name for ``xvit.data.get_dataset`` with
    options after a colon (``"imagenet:root=/data/imagenet,index_file=subset.txt"``), read
    by :func:`xvit._settings.parse_spec`.
    """
    if isinstance(dataset, str):
        name, kwargs = parse_spec(dataset, what="dataset option", example=DATASET_EXAMPLE)
        try:
            from ..data import get_dataset
        except ImportError as exc:
            raise InvalidInputError(
                f"cannot load dataset {dataset!r}: xvit.data is not available ({exc}); pass a "
                f"sequence of samples instead"
            ) from None
        data = get_dataset(name, **kwargs)
        described = dataset
    else:
        data = dataset
        described = f"{type(dataset).__module__}.{type(dataset).__name__}"
    try:
        total = len(data)
    except TypeError:
        data = list(data)
        total = len(data)
    count = total if n is None else min(n, total)
    if n is not None and total < n:
        warnings.warn(
            f"the dataset {described} has {total} images, fewer than n={n}; using all of them",
            stacklevel=3,
        )
    samples = [data[i] for i in range(count)]
    if not samples:
        raise InvalidInputError(f"the dataset {described} has no images to benchmark")
    _check_samples(samples)
    return samples, described


def _check_samples(samples: Sequence[Any]) -> None:
    ids = set()
    for s in samples:
        for attr in ("image", "label", "boxes", "id"):
            if not hasattr(s, attr):
                raise InvalidInputError(
                    f"dataset items need image, label, boxes and id attributes (xvit.data.Sample);"
                    f" got a {type(s).__name__} without {attr!r}"
                )
        if s.id in ids:
            raise InvalidInputError(
                f"image id {s.id!r} occurs twice in the dataset; ids must be unique to resume"
            )
        ids.add(s.id)
