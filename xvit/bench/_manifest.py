"""``manifest.json``: everything needed to reproduce a benchmark's numbers, in one file.

The manifest stands on its own (it repeats what ``run.json`` says about the settings): the
versions of xvit and the packages it runs on, the platform and device, the model and the hash
of its weights, the dataset and every image id, the seeds and the rule that derives each
image's seed, every parameter of every method and metric, the protocol (the metrics' notes
and the statistics under the table), and when the run started and ended.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from ..methods._base import Explainer
from ..metrics._base import Metric
from ..models._base import ModelAdapter

#: The manifest's file name in the output folder.
MANIFEST_FILE = "manifest.json"

#: The distributions whose versions the manifest records (None: not installed).
PACKAGES = (
    "xvit",
    "torch",
    "timm",
    "transformers",
    "open_clip_torch",
    "numpy",
    "scipy",
    "safetensors",
    "pillow",
)

#: How each image's seed comes from the run's seed (:func:`xvit.bench.image_seed`).
SEED_RULE = (
    "image seed = the first 4 bytes, little-endian, of sha256('<seed>/<image id>'); a "
    "randomised method or metric runs each image with its own seed"
)


def now() -> str:
    """The time in UTC, ISO 8601, to the second.

    Example:
        >>> now()[-6:]  # UTC
        '+00:00'
    """
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def package_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`PACKAGES`, Python's and the platform's.

    Example:
        >>> versions = package_versions()
        >>> versions["torch"] is not None, "python" in versions
        (True, True)
    """
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out


def _device(adapter: ModelAdapter, world_size: int) -> dict[str, Any]:
    device = adapter.device
    info: dict[str, Any] = {"device": str(device), "dtype": str(adapter.dtype)}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    info["ranks"] = world_size
    info["cpu_threads"] = torch.get_num_threads()
    info["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    return info


def _described(obj: Explainer | Metric) -> dict[str, Any]:
    cls = type(obj)
    out: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    out["params"] = obj.params()
    if isinstance(obj, Metric):
        out["higher_is_better"] = obj.higher_is_better
        out["expensive"] = obj.expensive
    return out


def build_manifest(
    *,
    settings: dict[str, Any],
    adapter: ModelAdapter,
    model_hash: str,
    image_ids: Sequence[str],
    explainers: Sequence[Explainer],
    metrics: Sequence[Metric],
    options: dict[str, Any],
    statistics: Sequence[str],
    started: str,
    world_size: int,
    files: dict[str, str],
) -> dict[str, Any]:
    """The manifest of a finished run, JSON-ready (values JSON cannot hold as their repr).

    Args:
        settings: What ``run.json`` records (model, dataset, target, seed, notes).
        adapter: The model's adapter (its class, preprocessing and device).
        model_hash: :func:`xvit._fingerprint.state_dict_hash` of the model.
        image_ids: The run's images, in dataset order.
        explainers: The methods, configured.
        metrics: The metrics, configured.
        options: The run's other options (images per call, save_maps, resume).
        statistics: The lines under the table on the paired tests and normalised scores.
        started: When the run started (:func:`now`).
        world_size: Number of ranks.
        files: Name -> path (relative to the output folder) of the files written.
    """
    prep = adapter.preprocessing
    manifest = {
        "manifest_version": 1,
        "started": started,
        "finished": now(),
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv else [],
        "versions": package_versions(),
        "device": _device(adapter, world_size),
        "model": {
            "spec": settings["model"],
            "class": f"{type(adapter.model).__module__}.{type(adapter.model).__qualname__}",
            "adapter": type(adapter).__name__,
            "hash": model_hash,
            "parameters": sum(p.numel() for p in adapter.model.parameters()),
            "preprocessing": asdict(prep) if is_dataclass(prep) else repr(prep),
        },
        "data": {
            "dataset": settings["dataset"],
            "images": len(image_ids),
            "image_ids": list(image_ids),
            "target": settings["target"],
        },
        "seeds": {"seed": settings["seed"], "rule": SEED_RULE},
        "methods": {e.name: _described(e) for e in explainers},
        "metrics": {m.name: _described(m) for m in metrics},
        "protocol": {
            "notes": settings["notes"],
            "statistics": list(statistics),
            "time": "explanation wall time per method and image group, metrics excluded",
        },
        "options": options,
        "files": files,
    }
    return json.loads(json.dumps(manifest, default=repr))  # type: ignore[no-any-return]
