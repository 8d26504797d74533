"""``run_benchmark``: every method evaluated the same way, resumable, with a summary table.

Every method sees the same images (the first ``n`` of the dataset), the same preprocessing
(the model's own), the same targets (the label, or the model's prediction on the clean image)
and the same metric instances. Explanation time is measured per method around
:func:`xvit.explain` (metrics excluded). Randomised methods and metrics get one seed per
image, derived from the run's ``seed`` and the image id, so results do not depend on batching
or on the order in which an interrupted run is resumed.

The work is split by job: :mod:`~xvit.bench._config` (the settings, checked once),
:mod:`~xvit.bench._specs` (methods, metrics, model and samples from what the caller names),
:mod:`~xvit.bench._resume` (the output folder and what it already holds),
:mod:`~xvit.bench._batch` (one batch explained and scored), :mod:`~xvit.bench._run` (one
rank's run and the summary), :mod:`~xvit.bench._distributed` (the ranks of a distributed run).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .._errors import ParameterError
from ._batch import explain_logits as explain_logits  # importable here, as before the split
from ._batch import image_seed
from ._config import TARGETS as TARGETS
from ._config import BenchConfig
from ._distributed import RankFailedError, Ranks, wants_distributed
from ._distributed import start as start_ranks
from ._resume import CONFIG_FILE as CONFIG_FILE
from ._run import BenchmarkResults, RankRun
from ._specs import load_samples as load_samples
from ._specs import resolve_methods, resolve_metrics


def run_benchmark(
    model: Any,
    dataset: Any,
    methods: Any = "all",
    metrics: Any = "default",
    n: int | None = 200,
    images_per_call: int = 16,
    device: str | torch.device | None = None,
    seed: int = 0,
    target: str = "label",
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    distributed: bool | None = None,
    timeout: float = 3600.0,
    batch_size: int | None = None,
    save_maps: bool = False,
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
        metrics: ``"default"`` (every registered metric but the ``expensive`` ones), ``"all"``
            or names / classes / configured metric instances.
        n: Number of images (the first ``n``; None for all).
        images_per_call: Images handed to a method at a time (one :func:`xvit.explain` call
            per method and group). Each method's own ``batch_size`` counts model inputs per
            forward (see :mod:`xvit._forward`); this sizes the groups of images instead.
        device: Where the model runs (None: where it is; a model object is moved). In a
            distributed run a CUDA device becomes ``cuda:LOCAL_RANK``.
        seed: Base seed; image ``id`` gets its own seed from (seed, id).
        target: ``"label"`` (the dataset's class) or ``"prediction"`` (the model's class on
            the clean image).
        out_dir: Folder for ``results.jsonl`` (per image, written as it goes), ``run.json``,
            ``table.md``, ``summary.csv``, ``summary.json``, ``curves.png`` and
            ``manifest.json`` (versions, model hash, seeds, every parameter, image ids,
            device, dates); None keeps everything in memory. Required in a distributed
            run, on a file system that every rank reaches.
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
        batch_size: Deprecated name of ``images_per_call`` (a DeprecationWarning).
        save_maps: Also store every method's raw maps, once per method, in
            ``out_dir/maps/<method>.safetensors`` (maps, targets, probabilities, image ids,
            the method's parameters, the input size and the model's hash), read back with
            :func:`xvit.load_explanation`. Needs ``out_dir``. Resuming a folder whose
            results were computed without it explains and scores those images again, so
            that every saved map is the one its scores came from.

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
    if batch_size is not None:
        warnings.warn(
            "run_benchmark(batch_size=...) is deprecated: it is called images_per_call now "
            "(batch_size is the name of a method's model inputs per forward)",
            DeprecationWarning,
            stacklevel=2,
        )
        images_per_call = batch_size
    config = BenchConfig(
        n=n,
        images_per_call=images_per_call,
        device=device,
        seed=seed,
        target=target,
        out_dir=None if out_dir is None else Path(out_dir),
        resume=resume,
        progress=progress,
        distributed=distributed,
        timeout=timeout,
        save_maps=save_maps,
    )
    if config.save_maps and config.out_dir is None:
        raise ParameterError(
            "save_maps needs out_dir (--out): the maps are written to OUT/maps/, one file per "
            "method"
        )
    explainers = resolve_methods(methods)
    metric_list = resolve_metrics(metrics)
    ranks = Ranks()
    if wants_distributed(config.distributed):
        if config.out_dir is None:
            raise ParameterError(
                "a distributed run needs out_dir (--out): the ranks hand their results over "
                "through files there, so pick a folder every rank can reach"
            )
        ranks, device = start_ranks(config.device, config.timeout)
        config = replace(config, device=device)
    try:
        return RankRun(config, explainers, metric_list, ranks).execute(model, dataset)
    finally:
        ranks.close()


__all__ = ["BenchmarkResults", "RankFailedError", "image_seed", "run_benchmark"]
