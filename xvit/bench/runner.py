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
from .._progress import Progress, reporting_to
from ..api import explain, make_explainer
from ..methods._base import Explainer
from ..methods._registration import get_method, list_methods
from ..metrics._base import Metric
from ..metrics._registration import get_metric, list_metrics
from ..models import get_adapter, load_model
from ..models._base import ModelAdapter
from ._distributed import (
    RankFailedError,
    Ranks,
    announce_failure,
    clear_failures,
    failure_message,
    peer_failed,
    shard,
    wants_distributed,
)
from ._distributed import start as start_ranks
from ._report import (
    MethodSummary,
    markdown_table,
    plot_curves,
    summarize,
    summary_dict,
    write_csv,
    write_json,
)
from ._store import (
    RESULTS_FILE,
    ResultStore,
    consolidate,
    load_results,
    merge_record,
    rank_file,
    result_files,
    to_json_number,
)

TARGETS = ("label", "prediction")
CONFIG_FILE = "run.json"


@dataclass
class BenchmarkResults:
    """What :func:`run_benchmark` returns.

    Attributes:
        config: The run's settings (model, dataset, target, seed, method and metric params).
        records: Per-image records of this run's images and methods (also the resumed ones).
        summaries: Per-method estimates, times and mean curves.
        table: The Markdown table (printed at the end of a run with ``progress=True``).
        fractions: x positions of each curve metric's points.
        files: Paths of the files written (results, run, table, csv, json, curves).

    Example:
        >>> import timm
        >>> from PIL import Image
        >>> from types import SimpleNamespace as S
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1, img_size=32,
        ...                       patch_size=8)
        >>> blank = Image.new("RGB", (32, 32))
        >>> data = [S(image=blank, label=0, boxes=(), id=str(i)) for i in range(2)]
        >>> r = run_benchmark(m, data, methods="random", metrics="insertion", n=2,
        ...                   progress=False)
        >>> print(r.table)  # doctest: +ELLIPSIS
        | method | n | insertion ↑ | time (s) | expl/s |
        ...
        >>> r.summary("random").images, len(r.records), list(r.fractions)
        (2, 2, ['insertion'])
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
    """A 32-bit seed for one image, stable across runs, batches and processes.

    Example:
        >>> image_seed(0, "img1") == image_seed(0, "img1")  # stable
        True
        >>> image_seed(0, "img1") == image_seed(1, "img1")  # another run seed, another seed
        False
    """
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
    for p in [*result_files(out), out / CONFIG_FILE]:
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
    distributed: bool | None = None,
    timeout: float = 3600.0,
) -> BenchmarkResults:
    """Evaluate explanation methods with metrics on a dataset, the same way for every method.

    Under ``torchrun`` (or in a process group that is already initialised) the run is
    distributed: every rank pins its own device (``cuda:LOCAL_RANK``), takes every
    ``world_size``-th of the images still to do, appends its records to
    ``results.rank<R>.jsonl``, and rank 0 gathers all results files into ``results.jsonl`` and
    the same table, CSV, JSON and plot a single-process run writes. Results are keyed by image
    and method, so a run resumes from any earlier run, whatever its number of ranks.

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
        device: Where the model runs (None: where it is; a model object is moved). In a
            distributed run a CUDA device becomes ``cuda:LOCAL_RANK``.
        seed: Base seed; image ``id`` gets its own seed from (seed, id).
        target: ``"label"`` (the dataset's class) or ``"prediction"`` (the model's class on
            the clean image).
        out_dir: Folder for ``results.jsonl`` (per image, written as it goes), ``run.json``,
            ``table.md``, ``summary.csv``, ``summary.json`` and ``curves.png``; None keeps
            everything in memory. Required in a distributed run, on a file system that every
            rank reaches.
        resume: Skip (image id, method) pairs already in the folder's results files whose
            record has every requested metric; False moves old results aside (renamed with a
            time stamp) and starts over.
        progress: Report on the way and print the table at the end (rank 0 only when
            distributed): progress over (image, method) pairs on stderr, moving within each
            explanation call (fractions of an image for the methods that score masks) and
            naming the method at work; a bar on a terminal, plain lines (every tenth of
            the run, and at least every minute) otherwise. False prints nothing at all (the
            table is in the result's ``table``).
        distributed: None: distributed when ``torchrun``'s environment (``RANK``,
            ``WORLD_SIZE`` > 1) or an initialised process group says so; False: never.
        timeout: Seconds a rank waits for the others at the start and at the end of a
            distributed run (the end waits for the slowest rank).

    Returns:
        :class:`BenchmarkResults`; with ``progress`` the table is also printed. In a
        distributed run only rank 0 prints it, writes the summary files and returns every
        image's records; the other ranks return the records they computed and an empty table.

    Raises:
        InvalidInputError: Bad dataset items, an unreadable/corrupt results file.
        ParameterError: Bad options, or resuming results computed with other settings.
        RankFailedError: A rank of a distributed run failed (on every rank; the message
            names the rank, its images and the error).

    Example:
        >>> import timm, xvit
        >>> from PIL import Image
        >>> from types import SimpleNamespace as S
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
        ...                       img_size=32, patch_size=8)
        >>> data = [S(image=Image.new("RGB", (40, 40)), label=1, boxes=((0, 0, 20, 20),),
        ...           id=f"img{i}") for i in range(2)]
        >>> r = run_benchmark(m, data, methods="random", metrics="pointing_game", n=2,
        ...                   progress=False)  # prints nothing
        >>> print(r.table)  # doctest: +ELLIPSIS
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
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ParameterError(f"timeout must be a positive number of seconds, got {timeout!r}")

    explainers = resolve_methods(methods)
    metric_list = resolve_metrics(metrics)
    out = Path(out_dir) if out_dir is not None else None
    ranks = Ranks()
    if wants_distributed(distributed):
        if out is None:
            raise ParameterError(
                "a distributed run needs out_dir (--out): the ranks hand their results over "
                "through files there, so pick a folder every rank can reach"
            )
        ranks, device = start_ranks(device, float(timeout))
    try:
        run = _Run(ranks, explainers, metric_list, seed, target, out, batch_size)
        return run.execute(model, dataset, n, device, resume, progress)
    finally:
        ranks.close()


class _Run:
    """One benchmark run on one rank: set-up, this rank's share of the work, the summary."""

    def __init__(
        self,
        ranks: Ranks,
        explainers: list[Explainer],
        metric_list: list[Metric],
        seed: int,
        target: str,
        out: Path | None,
        batch_size: int,
    ) -> None:
        self.ranks = ranks
        self.explainers = explainers
        self.metric_list = metric_list
        self.seed = seed
        self.target = target
        self.out = out
        self.batch_size = batch_size
        self.metric_names = [m.name for m in metric_list]
        self.method_names = [e.name for e in explainers]
        self.done: dict[tuple[str, str], dict[str, Any]] = {}
        self.store: ResultStore | None = None
        self.fractions: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.last_error: Exception | None = None

    def execute(
        self,
        model: Any,
        dataset: Any,
        n: int | None,
        device: str | torch.device | None,
        resume: bool,
        progress: bool,
    ) -> BenchmarkResults:
        ranks = self.ranks
        error: Exception | None = None
        todo: dict[str, list[str]] = {}
        try:
            adapter, model_desc = _load(model, device)
            samples, data_desc = load_samples(dataset, n)
            config = self._config(adapter, model_desc, data_desc)
            if ranks.is_main:
                self._prepare(config, resume)
                todo = self._todo(samples)
        except Exception as exc:
            if not ranks.distributed:
                raise
            error = exc
        if ranks.distributed:
            # every rank learns whether all could start, and rank 0's plan
            plans = ranks.gather((_describe(error), todo))
            if error is not None:
                raise error
            failed = [(r, why) for r, (why, _) in enumerate(plans) if why is not None]
            if failed:
                raise RankFailedError(
                    "; ".join(
                        f"rank {r} of {ranks.world_size} could not start: {w}" for r, w in failed
                    )
                )
            todo = plans[0][1]
            assert self.out is not None
            self.store = ResultStore(rank_file(self.out, ranks.rank))
        by_id = {s.id: s for s in samples}
        missing = [i for i in todo if i not in by_id]
        if missing:
            raise InvalidInputError(
                f"rank {ranks.rank} has no image {missing[0]!r} that rank 0 has; every rank "
                f"must load the same dataset (the same --data and --n)"
            )
        mine = shard([by_id[i] for i in todo], ranks.rank, ranks.world_size)
        pairs = sum(len(todo[s.id]) for s in mine)
        if ranks.distributed and progress:
            print(
                f"xvit bench: rank {ranks.rank} of {ranks.world_size} ({adapter.device}): "
                f"{len(mine)} of {len(todo)} images to do, {pairs} explanations",
                file=sys.stderr,
                flush=True,
            )
            total = pairs
        else:
            total = len(samples) * len(self.explainers)
        bar = _progress_bar(total, total - pairs, progress and ranks.is_main, ranks)
        failure = self._work(adapter, mine, todo, bar)
        if ranks.distributed:
            failures = [f for f in ranks.gather(failure) if f is not None]
            if failures:
                message = failure_message(failures, ranks.world_size, self.out or Path("."))
                raise RankFailedError(message) from self.last_error
        return self._finish(samples, config, progress)

    def _config(self, adapter: ModelAdapter, model_desc: str, data_desc: str) -> dict[str, Any]:
        prep = adapter.preprocessing
        h, w = prep.size
        self.fractions = {
            m.name: (m.counts(h, w).double() / (h * w)).tolist()  # type: ignore[attr-defined]
            for m in self.metric_list
            if hasattr(m, "counts")
        }
        self.notes = [note for m in self.metric_list if (note := m.footnote((h, w)))]
        return _jsonable(  # type: ignore[no-any-return]
            {
                "model": model_desc,
                "dataset": data_desc,
                "target": self.target,
                "seed": self.seed,
                "methods": {e.name: e.params() for e in self.explainers},
                "metrics": {m.name: m.params() for m in self.metric_list},
                "notes": self.notes,
            }
        )

    def _prepare(self, config: dict[str, Any], resume: bool) -> None:
        """Rank 0, before any rank writes: check and load earlier results, write run.json."""
        out = self.out
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            _check_resume(out / CONFIG_FILE, config)
            self.done = load_results(out)
            old = {}
            if (out / CONFIG_FILE).exists():
                old = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
            for kind in ("methods", "metrics"):
                config[kind] = {**old.get(kind, {}), **config[kind]}
        else:
            _move_aside(out)
        clear_failures(out)
        write_json(out / CONFIG_FILE, config)
        self.store = ResultStore(out / RESULTS_FILE)

    def _todo(self, samples: Sequence[Any]) -> dict[str, list[str]]:
        """Image id -> the methods still to run on it, in dataset order (images with none
        left out)."""
        todo = {}
        for s in samples:
            left = [m for m in self.method_names if not self._finished(s.id, m)]
            if left:
                todo[s.id] = left
        return todo

    def _finished(self, image_id: str, method: str) -> bool:
        rec = self.done.get((image_id, method))
        return rec is not None and all(m in rec["scores"] for m in self.metric_names)

    def _emit(self, record: dict[str, Any]) -> None:
        key = (record["id"], record["method"])
        self.done[key] = merge_record(self.done[key], record) if key in self.done else record
        if self.store is not None:
            self.store.append(record)

    def _work(
        self,
        adapter: ModelAdapter,
        mine: Sequence[Any],
        todo: Mapping[str, list[str]],
        bar: Progress,
    ) -> dict[str, Any] | None:
        """Explain and score this rank's images; in a distributed run a failure is caught,
        announced to the other ranks and returned (a single-process run raises it)."""
        ranks = self.ranks
        where: dict[str, Any] = {}
        try:
            for start in range(0, len(mine), self.batch_size):
                if ranks.distributed and self.out is not None and peer_failed(self.out):
                    break
                batch = mine[start : start + self.batch_size]
                pending = {
                    e.name: [i for i, s in enumerate(batch) if e.name in todo[s.id]]
                    for e in self.explainers
                }
                where.update(images=[s.id for s in batch], method=None)
                _run_batch(
                    adapter,
                    batch,
                    self.explainers,
                    self.metric_list,
                    pending,
                    self.seed,
                    self.target,
                    bar,
                    self._emit,
                    where,
                )
        except Exception as exc:
            if not ranks.distributed:
                raise
            self.last_error = exc
            failure = {
                "rank": ranks.rank,
                "images": where.get("images", []),
                "method": where.get("method"),
                "error": _describe(exc),
            }
            if self.out is not None:
                announce_failure(self.out, failure)
            return failure
        finally:
            bar.close()
        return None

    def _finish(
        self, samples: Sequence[Any], config: dict[str, Any], show: bool
    ) -> BenchmarkResults:
        """The summary: on rank 0 (or alone) from every results file, written, and printed
        when ``show``."""
        ranks, out = self.ranks, self.out
        if not ranks.is_main:
            mine = list(self.done.values())
            summaries = summarize(mine, self.method_names, self.metric_names)
            return BenchmarkResults(config, mine, summaries, "", self.fractions)
        if out is not None and (ranks.distributed or len(result_files(out)) > 1):
            self.done = load_results(out)
            consolidate(out, self.done.values())
        ids = [s.id for s in samples]
        selected = [
            self.done[(i, m)] for m in self.method_names for i in ids if (i, m) in self.done
        ]
        summaries = summarize(selected, self.method_names, self.metric_names)
        higher = {m.name: m.higher_is_better for m in self.metric_list}
        table = markdown_table(summaries, self.metric_names, higher, self.notes)
        if show:
            print(table)
        results = BenchmarkResults(config, selected, summaries, table, self.fractions)
        if out is not None:
            results.files["results"] = out / RESULTS_FILE
            results.files["run"] = out / CONFIG_FILE
            (out / "table.md").write_text(table + "\n", encoding="utf-8")
            results.files["table"] = out / "table.md"
            write_csv(out / "summary.csv", summaries, self.metric_names, higher)
            results.files["csv"] = out / "summary.csv"
            write_json(out / "summary.json", summary_dict(summaries, self.fractions, config))
            results.files["json"] = out / "summary.json"
            if plot_curves(out / "curves.png", summaries, self.fractions):
                results.files["curves"] = out / "curves.png"
        return results


def _describe(error: BaseException | None) -> str | None:
    """``Type: message`` of an error (None for None), to send to the other ranks."""
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"


def _progress_bar(total: int, initial: int, enabled: bool, ranks: Ranks) -> Progress:
    desc = "xvit bench"
    if ranks.distributed:
        desc += f" (rank {ranks.rank}/{ranks.world_size})"
    return Progress(total, desc=desc, unit="expl", plural="expl", initial=initial, enabled=enabled)


def _run_batch(
    adapter: ModelAdapter,
    batch: Sequence[Any],
    explainers: Sequence[Explainer],
    metric_list: Sequence[Metric],
    pending: Mapping[str, list[int]],
    seed: int,
    target: str,
    bar: Progress,
    emit: Callable[[dict[str, Any]], None],
    where: dict[str, Any] | None = None,
) -> None:
    """Explain and score the pending images of one batch with every method; each method's
    records are emitted as soon as its metrics are done. ``where`` is kept up to date with
    the images and method at work, for the message of a failure."""
    where = {} if where is None else where
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
        bar.set_label(explainer.name)
        where.update(images=[batch[i].id for i in idx], method=explainer.name)
        sel = torch.tensor(idx, device=x.device)
        xs, ts = x[sel], targets[sel]
        _sync(adapter)
        t0 = time.perf_counter()
        with reporting_to(bar):  # each explain call moves the bar by its images
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


def explain_logits(adapter: ModelAdapter, x: torch.Tensor) -> torch.Tensor:
    """The clean logits of a batch, with the model in eval mode for the call."""
    from ..models import model_lock, preserved_state

    with model_lock(adapter.model), preserved_state(adapter.model):
        logits = adapter.logits(x, check_finite=False)
    if not torch.isfinite(logits).all():
        raise ModelOutputError(
            "the model returned NaN or infinite logits on clean images; check the model and "
            "its preprocessing"
        )
    return logits


__all__ = ["BenchmarkResults", "RankFailedError", "image_seed", "run_benchmark"]
