"""``run_benchmark``: every method evaluated the same way, resumable, with a summary table.

Every method sees the same images (the first ``n`` of the dataset), the same preprocessing
(the model's own), the same targets (the label, or the model's prediction on the clean image)
and the same metric instances. Explanation time is measured per method around
:func:`xvit.explain` (metrics excluded). Randomised methods and metrics get one seed per
image, derived from the run's ``seed`` and the image id, so results do not depend on batching
or on the order in which an interrupted run is resumed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .._errors import InvalidInputError, ModelOutputError, ParameterError
from .._inputs import as_image
from ..api import explain, make_explainer
from ..methods._base import Explainer
from ..methods._registration import get_method, list_methods
from ..metrics._base import Metric
from ..metrics._registration import get_metric, list_metrics
from ..models import get_adapter, load_model
from ..models._base import ModelAdapter
from ._report import (
    MethodSummary,
    markdown_table,
    plot_curves,
    summarize,
    summary_dict,
    write_csv,
    write_json,
)
from ._store import ResultStore, to_json_number

TARGETS = ("label", "prediction")
RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "run.json"


@dataclass
class BenchmarkResults:
    """What :func:`run_benchmark` returns.

    Attributes:
        config: The run's settings (model, dataset, target, seed, method and metric params).
        records: Per-image records of this run's images and methods (also the resumed ones).
        summaries: Per-method estimates, times and mean curves.
        table: The Markdown table that was printed.
        fractions: x positions of each curve metric's points.
        files: Paths of the files written (results, run, table, csv, json, curves).
    """

    config: dict[str, Any]
    records: list[dict[str, Any]]
    summaries: list[MethodSummary]
    table: str
    fractions: dict[str, list[float]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self, method: str) -> MethodSummary:
        """The summary of one method."""
        for s in self.summaries:
            if s.method == method:
                return s
        raise ParameterError(
            f"no method {method!r} in these results; they have "
            f"{', '.join(s.method for s in self.summaries)}"
        )


def image_seed(seed: int, image_id: str) -> int:
    """A 32-bit seed for one image, stable across runs, batches and processes."""
    digest = hashlib.sha256(f"{seed}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _names(spec: Any, what: str) -> list[Any]:
    if isinstance(spec, str):
        items: list[Any] = [s.strip() for s in spec.split(",") if s.strip()]
        if not items:
            raise ParameterError(f"no {what} given; pass names separated by commas, or 'all'")
        return items
    if isinstance(spec, Sequence):
        return list(spec)
    return [spec]


def resolve_methods(spec: Any) -> list[Explainer]:
    """Explainers from ``"all"``, a comma list of names, or names/classes/instances."""
    items = list_methods() if spec == "all" else _names(spec, "methods")
    explainers = [
        make_explainer(item if isinstance(item, Explainer) else get_method(item)) for item in items
    ]
    seen: set[str] = set()
    for e in explainers:
        if e.name in seen:
            raise ParameterError(f"method {e.name!r} is listed twice; list each method once")
        seen.add(e.name)
    return explainers


def resolve_metrics(spec: Any) -> list[Metric]:
    """Metrics from ``"all"``, a comma list of names, or names/classes/instances."""
    items = list_metrics() if spec == "all" else _names(spec, "metrics")
    out: list[Metric] = []
    for item in items:
        out.append(item if isinstance(item, Metric) else get_metric(item).create())
    names = [m.name for m in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ParameterError(f"metric(s) {', '.join(dupes)} listed twice; list each once")
    return out


def _parse_dataset_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` (values are ints/floats when they parse)."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in item:
            raise ParameterError(
                f"dataset option {item!r} is not key=value; write e.g. "
                f"'imagenet:root=/data/imagenet,index_file=subset.txt'"
            )
        key, value = item.split("=", 1)
        parsed: Any = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                continue
        kwargs[key.strip()] = parsed
    return name.strip(), kwargs


def load_samples(dataset: Any, n: int | None) -> tuple[list[Any], str]:
    """The first ``n`` samples and a description of where they came from."""
    if isinstance(dataset, str):
        name, kwargs = _parse_dataset_spec(dataset)
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
    return samples, described


def _load(model: Any, device: str | torch.device | None) -> tuple[ModelAdapter, str]:
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise InvalidInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError(
                f"device {device!r} requested but CUDA is not available; use cpu"
            )
    if isinstance(model, str):
        net = load_model(model, device=device or "cpu")
        return get_adapter(net), model
    adapter = get_adapter(model)
    if device is not None:
        adapter.model.to(device)
    return adapter, f"{type(adapter.model).__module__}.{type(adapter.model).__name__}"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _sync(adapter: ModelAdapter) -> None:
    if adapter.device.type == "cuda":
        torch.cuda.synchronize(adapter.device)


def _check_resume(path: Path, config: dict[str, Any]) -> None:
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{path} is not readable JSON ({exc}); it describes the results beside it, so the "
            f"run stops: restore it, or start over with another output folder"
        ) from None
    for key in ("model", "dataset", "target", "seed"):
        if old.get(key) != config[key]:
            raise ParameterError(
                f"the results in {path.parent} were computed with {key}={old.get(key)!r}, not "
                f"{config[key]!r}; resuming would mix them. Use another output folder, or "
                f"--no-resume to move the old results aside"
            )
    for kind in ("metrics", "methods"):
        for name, params in config[kind].items():
            before = old.get(kind, {}).get(name)
            if before is not None and before != params:
                raise ParameterError(
                    f"{kind[:-1]} {name!r} ran with {before} in {path.parent}, now with "
                    f"{params}; use another output folder, or --no-resume"
                )


def _move_aside(out: Path) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for name in (RESULTS_FILE, CONFIG_FILE):
        p = out / name
        if p.exists():
            p.rename(out / f"{p.stem}-{stamp}{p.suffix}")


def run_benchmark(
    model: Any,
    dataset: Any,
    methods: Any = "all",
    metrics: Any = "all",
    n: int | None = 200,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    seed: int = 0,
    target: str = "label",
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> BenchmarkResults:
    """Evaluate explanation methods with metrics on a dataset, the same way for every method.

    Args:
        model: A model spec for :func:`xvit.load_model` (``xvit:digits-vit``, ``timm:...``,
            a checkpoint path), a model object, or an adapter.
        dataset: A name for ``xvit.data.get_dataset`` (``"digits"``, or with options
            ``"imagenet:root=/data/imagenet,index_file=subset.txt"``), or a sequence of
            samples with ``image`` (PIL), ``label``, ``boxes`` (original-image pixels) and
            a unique ``id``.
        methods: ``"all"`` (every registered method, plugins included), a comma-separated
            string, or a list of names, classes or configured explainers.
        metrics: ``"all"`` or names / classes / configured metric instances.
        n: Number of images (the first ``n``; None for all).
        batch_size: Images per explanation call.
        device: Where the model runs (None: where it is; a model object is moved).
        seed: Base seed; image ``id`` gets its own seed from (seed, id).
        target: ``"label"`` (the dataset's class) or ``"prediction"`` (the model's class on
            the clean image).
        out_dir: Folder for ``results.jsonl`` (per image, written as it goes), ``run.json``,
            ``table.md``, ``summary.csv``, ``summary.json`` and ``curves.png``; None keeps
            everything in memory.
        resume: Skip (image id, method) pairs already in ``results.jsonl`` whose record has
            every requested metric; False moves old results aside (renamed with a time stamp)
            and starts over.
        progress: Show a progress bar on stderr.

    Returns:
        :class:`BenchmarkResults`; the table is also printed.

    Raises:
        InvalidInputError: Bad dataset items, an unreadable/corrupt results file.
        ParameterError: Bad options, or resuming results computed with other settings.

    Example:
        >>> import timm, xvit
        >>> from PIL import Image
        >>> from types import SimpleNamespace as S
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> data = [S(image=Image.new("RGB", (40, 40)), label=1, boxes=((0, 0, 20, 20),),
        ...           id=f"img{i}") for i in range(2)]
        >>> r = run_benchmark(m, data, methods="random", metrics="pointing_game", n=2,
        ...                   progress=False)  # doctest: +ELLIPSIS
        | method | n | pointing_game ↑ | time (s) | expl/s |
        ...
        >>> r.summary("random").images
        2
    """
    if target not in TARGETS:
        raise ParameterError(f"target must be 'label' or 'prediction', got {target!r}")
    for name, value in (("batch_size", batch_size), ("n", n)):
        if value is None and name == "n":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"seed must be an integer, got {seed!r}")

    explainers = resolve_methods(methods)
    metric_list = resolve_metrics(metrics)
    adapter, model_desc = _load(model, device)
    samples, data_desc = load_samples(dataset, n)
    prep = adapter.preprocessing
    h, w = prep.size
    fractions = {
        m.name: (m.counts(h, w).double() / (h * w)).tolist()  # type: ignore[attr-defined]
        for m in metric_list
        if hasattr(m, "counts")
    }
    config: dict[str, Any] = _jsonable(
        {
            "model": model_desc,
            "dataset": data_desc,
            "target": target,
            "seed": seed,
            "methods": {e.name: e.params() for e in explainers},
            "metrics": {m.name: m.params() for m in metric_list},
        }
    )
    higher = {m.name: m.higher_is_better for m in metric_list}
    metric_names = [m.name for m in metric_list]
    method_names = [e.name for e in explainers]

    out = Path(out_dir) if out_dir is not None else None
    store = None
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            _check_resume(out / CONFIG_FILE, config)
            store = ResultStore(out / RESULTS_FILE)
            done = store.load()
            old = {}
            if (out / CONFIG_FILE).exists():
                old = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
            for kind in ("methods", "metrics"):
                config[kind] = {**old.get(kind, {}), **config[kind]}
        else:
            _move_aside(out)
            store = ResultStore(out / RESULTS_FILE)
        write_json(out / CONFIG_FILE, config)

    def finished(image_id: str, method: str) -> bool:
        rec = done.get((image_id, method))
        return rec is not None and all(m in rec["scores"] for m in metric_names)

    def emit(record: dict[str, Any]) -> None:
        done[(record["id"], record["method"])] = record
        if store is not None:
            store.append(record)

    bar = _progress_bar(len(samples) * len(explainers), progress)
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            pending = {
                e.name: [i for i, s in enumerate(batch) if not finished(s.id, e.name)]
                for e in explainers
            }
            skipped = sum(len(batch) - len(p) for p in pending.values())
            if skipped:
                bar.update(skipped)
            if not any(pending.values()):
                continue
            _run_batch(adapter, batch, explainers, metric_list, pending, seed, target, bar, emit)
    finally:
        bar.close()

    ids = [s.id for s in samples]
    selected = [done[(i, m)] for m in method_names for i in ids if (i, m) in done]
    summaries = summarize(selected, method_names, metric_names)
    table = markdown_table(summaries, metric_names, higher)
    print(table)
    results = BenchmarkResults(config, selected, summaries, table, fractions)
    if out is not None:
        results.files["results"] = out / RESULTS_FILE
        results.files["run"] = out / CONFIG_FILE
        (out / "table.md").write_text(table + "\n", encoding="utf-8")
        results.files["table"] = out / "table.md"
        write_csv(out / "summary.csv", summaries, metric_names, higher)
        results.files["csv"] = out / "summary.csv"
        write_json(out / "summary.json", summary_dict(summaries, fractions, config))
        results.files["json"] = out / "summary.json"
        if plot_curves(out / "curves.png", summaries, fractions):
            results.files["curves"] = out / "curves.png"
    return results


def _progress_bar(total: int, enabled: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return _NullBar()
    return tqdm(
        total=total,
        disable=not enabled,
        file=sys.stderr,
        desc="xvit bench",
        unit="expl",
        dynamic_ncols=True,
    )


class _NullBar:
    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass

    def set_postfix_str(self, _s: str) -> None:
        pass


def _run_batch(
    adapter: ModelAdapter,
    batch: Sequence[Any],
    explainers: Sequence[Explainer],
    metric_list: Sequence[Metric],
    pending: Mapping[str, list[int]],
    seed: int,
    target: str,
    bar: Any,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Explain and score the pending images of one batch with every method; each method's
    records are emitted as soon as its metrics are done."""
    prep = adapter.preprocessing
    images = [as_image(s.image) for s in batch]
    x = torch.stack([prep(img) for img in images]).to(device=adapter.device, dtype=adapter.dtype)
    adapter.check_input(x)
    with torch.inference_mode():
        logits = explain_logits(adapter, x)
    probs_all = logits.float().softmax(-1)
    preds = probs_all.argmax(-1)
    labels = []
    for s in batch:
        label = s.label
        if (
            isinstance(label, bool)
            or not isinstance(label, int)
            or not (0 <= label < adapter.num_classes)
        ):
            raise InvalidInputError(
                f"image {s.id!r} has label {label!r}, not a class of this model "
                f"(0 .. {adapter.num_classes - 1}); check that the dataset matches the model"
            )
        labels.append(label)
    targets = torch.tensor(labels, device=x.device) if target == "label" else preds.clone()
    boxes = [prep.transform_boxes(s.boxes, img.size) for s, img in zip(batch, images)]
    seeds = [image_seed(seed, s.id) for s in batch]
    for explainer in explainers:
        idx = pending[explainer.name]
        if not idx:
            continue
        bar.set_postfix_str(explainer.name)
        sel = torch.tensor(idx, device=x.device)
        xs, ts = x[sel], targets[sel]
        _sync(adapter)
        t0 = time.perf_counter()
        if type(explainer).randomized:
            maps = torch.cat(
                [
                    explain(
                        type(explainer).create(**{**explainer.params(), "seed": seeds[i]}),
                        adapter,
                        x[i : i + 1],
                        target=targets[i : i + 1],
                    ).map
                    for i in idx
                ]
            )
        else:
            maps = explain(explainer, adapter, xs, target=ts).map
        _sync(adapter)
        elapsed = time.perf_counter() - t0
        results = [
            metric(
                adapter,
                xs,
                ts,
                maps,
                [boxes[i] for i in idx],
                seeds=[seeds[i] for i in idx],
            )
            for metric in metric_list
        ]
        for j, i in enumerate(idx):
            record: dict[str, Any] = {
                "id": batch[i].id,
                "method": explainer.name,
                "label": labels[i],
                "target": int(targets[i]),
                "prediction": int(preds[i]),
                "probability": float(probs_all[i, targets[i]]),
                "time_s": elapsed / len(idx),
                "scores": {r.metric: to_json_number(float(r.scores[j])) for r in results},
                "curves": {
                    r.metric: [round(float(v), 6) for v in r.curves[j]]
                    for r in results
                    if r.curves is not None
                },
            }
            emit(record)
        bar.update(len(idx))


def explain_logits(adapter: ModelAdapter, x: torch.Tensor) -> torch.Tensor:
    """The clean logits of a batch, with the model in eval mode for the call."""
    from ..models import model_lock, preserved_state

    with model_lock(adapter.model), preserved_state(adapter.model):
        logits = adapter.forward_logits(x)
    if not torch.isfinite(logits).all():
        raise ModelOutputError(
            "the model returned NaN or infinite logits on clean images; check the model and "
            "its preprocessing"
        )
    return logits


__all__ = ["BenchmarkResults", "image_seed", "run_benchmark"]
