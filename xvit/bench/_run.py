"""One benchmark run on one rank: its set-up, its share of the work, and the summary."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import InvalidInputError, ParameterError
from .._fingerprint import state_dict_hash
from .._progress import Progress
from ..methods._base import Explainer
from ..metrics import MPRT
from ..metrics._base import Metric
from ..models._base import ModelAdapter
from ..viz import plot_mprt
from ._batch import PreparedBatch
from ._compare import MetricComparison, compare, comparison_notes
from ._config import BenchConfig
from ._distributed import (
    RankFailedError,
    Ranks,
    announce_failure,
    failure_message,
    peer_failed,
    shard,
)
from ._manifest import MANIFEST_FILE, build_manifest, now
from ._maps import MapStore, missing_maps
from ._report import (
    MethodSummary,
    markdown_table,
    plot_curves,
    summarize,
    summary_dict,
    write_csv,
    write_json,
)
from ._resume import CONFIG_FILE, Records, prepare_folder, to_do
from ._specs import load_adapter, load_samples
from ._store import (
    RESULTS_FILE,
    ResultStore,
    consolidate,
    load_results,
    merge_record,
    rank_file,
    result_files,
)


@dataclass
class BenchmarkResults:
    """What :func:`~xvit.bench.run_benchmark` returns.

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
        >>> from xvit.bench import run_benchmark
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


class RankRun:
    """One benchmark run on one rank (the only one, when not distributed).

    Args:
        config: How the run goes.
        explainers: The methods, configured.
        metrics: The metrics, configured.
        ranks: This process's place among the ranks.
    """

    def __init__(
        self,
        config: BenchConfig,
        explainers: list[Explainer],
        metrics: list[Metric],
        ranks: Ranks,
    ) -> None:
        self.config = config
        self.explainers = explainers
        self.metrics = metrics
        self.ranks = ranks
        self.out = config.out_dir
        self.metric_names = [m.name for m in metrics]
        self.method_names = [e.name for e in explainers]
        self.done: Records = {}
        self.store: ResultStore | None = None
        self.fractions: dict[str, list[float]] = {}
        self.notes: list[str] = []
        #: MPRT metric name -> (its steps on this model, its similarity), for mprt.png
        self.cascades: dict[str, tuple[list[str], str]] = {}
        self.last_error: Exception | None = None
        self.maps: MapStore | None = None
        self.model_hash = ""
        self.started = now()

    def execute(self, model: Any, dataset: Any) -> BenchmarkResults:
        """Set up (every rank learns whether all could), do this rank's share, summarize."""
        ranks, config = self.ranks, self.config
        error: Exception | None = None
        todo: dict[str, list[str]] = {}
        try:
            adapter, model_desc = load_adapter(model, config.device)
            samples, data_desc = load_samples(dataset, config.n)
            settings = self._settings(adapter, model_desc, data_desc)
            if self.out is not None and (config.save_maps or ranks.is_main):
                self.model_hash = state_dict_hash(adapter.model)
            if config.save_maps and self.out is not None:
                meta = {k: settings[k] for k in ("model", "dataset", "target", "seed")}
                self.maps = MapStore(self.out, ranks.rank, {**meta, "model_hash": self.model_hash})
            if ranks.is_main:
                saved = None
                if self.out is not None:
                    self.done = prepare_folder(self.out, settings, config.resume)
                    self.store = ResultStore(self.out / RESULTS_FILE)
                    saved = self._saved_maps()
                todo = to_do(samples, self.done, self.method_names, self.metric_names, saved)
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
        if ranks.distributed and config.progress:
            print(
                f"xvit bench: rank {ranks.rank} of {ranks.world_size} ({adapter.device}): "
                f"{len(mine)} of {len(todo)} images to do, {pairs} explanations",
                file=sys.stderr,
                flush=True,
            )
            total = pairs
        else:
            total = len(samples) * len(self.explainers)
        bar = _progress_bar(total, total - pairs, config.progress and ranks.is_main, ranks)
        failure = self._work(adapter, mine, todo, bar)
        if ranks.distributed:
            failures = [f for f in ranks.gather(failure) if f is not None]
            if failures:
                message = failure_message(failures, ranks.world_size, self.out or Path("."))
                raise RankFailedError(message) from self.last_error
        return self._finish(samples, settings, adapter)

    def _saved_maps(self) -> set[tuple[str, str]] | None:
        """The pairs with a saved map (None when the run saves none); says on stderr how
        many finished pairs will be computed again for want of one."""
        if self.maps is None:
            return None
        saved = self.maps.saved()
        wanted = set(self.method_names)
        redo = [k for k in missing_maps(self.done, saved) if k[1] in wanted]
        if redo and self.config.progress:
            print(
                f"xvit bench: {len(redo)} (image, method) pairs in {self.out} were scored "
                f"without --save-maps; explaining and scoring them again so that every saved "
                f"map is the one its scores came from",
                file=sys.stderr,
                flush=True,
            )
        return saved

    def _settings(self, adapter: ModelAdapter, model_desc: str, data_desc: str) -> dict[str, Any]:
        """What ``run.json`` records; also the curve metrics' x positions and the table's
        notes at this model's input size."""
        h, w = adapter.preprocessing.size
        self.fractions = {
            m.name: (m.counts(h, w).double() / (h * w)).tolist()  # type: ignore[attr-defined]
            for m in self.metrics
            if type(m).curve
        }
        self.notes = [note for m in self.metrics if (note := m.footnote((h, w)))]
        self.cascades = {
            m.name: (m.steps(adapter), m.similarity) for m in self.metrics if isinstance(m, MPRT)
        }
        settings = {
            "model": model_desc,
            "dataset": data_desc,
            "target": self.config.target,
            "seed": self.config.seed,
            "methods": {e.name: e.params() for e in self.explainers},
            "metrics": {m.name: m.params() for m in self.metrics},
            "notes": self.notes,
        }
        return json.loads(json.dumps(settings, default=repr))  # type: ignore[no-any-return]

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
        ranks, config = self.ranks, self.config
        images: list[str] = []  # the images at work, and the method, for a failure's message
        method: str | None = None
        try:
            for start in range(0, len(mine), config.images_per_call):
                if ranks.distributed and self.out is not None and peer_failed(self.out):
                    break
                samples = mine[start : start + config.images_per_call]
                images, method = [s.id for s in samples], None
                batch = PreparedBatch.prepare(
                    adapter, samples, self.config.target, self.config.seed
                )
                for explainer in self.explainers:
                    indices = [i for i, s in enumerate(samples) if explainer.name in todo[s.id]]
                    if not indices:
                        continue
                    images, method = [samples[i].id for i in indices], explainer.name
                    sink = None if self.maps is None else self.maps.write
                    for record in batch.records(
                        adapter, explainer, self.metrics, indices, bar, on_maps=sink
                    ):
                        self._emit(record)
        except Exception as exc:
            if not ranks.distributed:
                raise
            self.last_error = exc
            failure = {
                "rank": ranks.rank,
                "images": images,
                "method": method,
                "error": _describe(exc),
            }
            if self.out is not None:
                announce_failure(self.out, failure)
            return failure
        finally:
            bar.close()
        return None

    def _finish(
        self, samples: Sequence[Any], settings: dict[str, Any], adapter: ModelAdapter
    ) -> BenchmarkResults:
        """The summary: on rank 0 (or alone) from every results file, written, and printed
        when the run shows progress."""
        ranks, out = self.ranks, self.out
        if not ranks.is_main:
            mine = list(self.done.values())
            summaries = summarize(mine, self.method_names, self.metric_names)
            return BenchmarkResults(settings, mine, summaries, "", self.fractions)
        if out is not None and (ranks.distributed or len(result_files(out)) > 1):
            self.done = load_results(out)
            consolidate(out, self.done.values())
        ids = [s.id for s in samples]
        selected = [
            self.done[(i, m)] for m in self.method_names for i in ids if (i, m) in self.done
        ]
        summaries = summarize(selected, self.method_names, self.metric_names)
        higher = {m.name: m.higher_is_better for m in self.metrics}
        means = {s.method: {k: e.mean for k, e in s.metrics.items()} for s in summaries}
        comparisons = compare(selected, means, higher)
        table = markdown_table(summaries, self.metric_names, higher, self.notes, comparisons)
        if self.config.progress:
            print(table)
        results = BenchmarkResults(settings, selected, summaries, table, self.fractions)
        if out is not None:
            results.files["results"] = out / RESULTS_FILE
            results.files["run"] = out / CONFIG_FILE
            (out / "table.md").write_text(table + "\n", encoding="utf-8")
            results.files["table"] = out / "table.md"
            write_csv(out / "summary.csv", summaries, self.metric_names, higher, comparisons)
            results.files["csv"] = out / "summary.csv"
            summary = summary_dict(summaries, self.fractions, settings, comparisons)
            write_json(out / "summary.json", summary)
            results.files["json"] = out / "summary.json"
            if plot_curves(out / "curves.png", summaries, self.fractions):
                results.files["curves"] = out / "curves.png"
            if self.maps is not None:
                for e in self.explainers:
                    path = self.maps.finish(e.name, e.params(), ids)
                    if path is not None:
                        results.files[f"maps/{e.name}"] = path
            self._write_manifest(results, settings, adapter, ids, comparisons)
            for name, (steps, similarity) in self.cascades.items():
                if any(name in s.curves for s in summaries):
                    fig = plot_mprt(summaries, steps, metric=name, similarity=similarity)
                    fig.savefig(str(out / f"{name}.png"), dpi=110)
                    results.files[name] = out / f"{name}.png"
        return results

    def _write_manifest(
        self,
        results: BenchmarkResults,
        settings: dict[str, Any],
        adapter: ModelAdapter,
        ids: list[str],
        comparisons: Mapping[str, MetricComparison],
    ) -> None:
        """``manifest.json``: this run, complete on its own (see :mod:`._manifest`)."""
        assert self.out is not None
        path = self.out / MANIFEST_FILE
        options = {
            "images_per_call": self.config.images_per_call,
            "resume": self.config.resume,
            "save_maps": self.config.save_maps,
        }
        files = {name: str(p.relative_to(self.out)) for name, p in results.files.items()}
        files["manifest"] = MANIFEST_FILE
        manifest = build_manifest(
            settings=settings,
            adapter=adapter,
            model_hash=self.model_hash,
            image_ids=ids,
            explainers=self.explainers,
            metrics=self.metrics,
            options=options,
            statistics=comparison_notes(comparisons, self.method_names),
            started=self.started,
            world_size=self.ranks.world_size,
            files=files,
        )
        write_json(path, manifest)
        results.files["manifest"] = path


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
