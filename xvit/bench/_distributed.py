"""The benchmark under ``torch.distributed``: one process per device, launched by ``torchrun``.

``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``. With those present the runner joins a process group
(NCCL for CUDA tensors plus gloo for the small Python objects it exchanges, gloo alone on
CPUs), pins ``cuda:LOCAL_RANK``, and takes every ``world_size``-th of the images still to do.
The ranks exchange only their plan and their final status; the results travel through
per-rank files in the output folder, which every rank must be able to reach (one node's disk,
or a shared file system on a cluster).

A rank whose work raises writes ``failed.rank<R>.json`` into the output folder; the others
see it before their next batch, stop, and every rank then raises :class:`RankFailedError`
naming the rank, the images and the error. A rank that dies outright is noticed by
``torchrun``, which stops the others; without ``torchrun`` the others give up after
``timeout`` seconds at the next synchronisation point.

References:
    PyTorch, "torchrun (Elastic Launch)" and "Distributed communication package",
    https://pytorch.org/docs/stable/distributed.html

Example:
    >>> shard(["a", "b", "c", "d", "e"], rank=1, world_size=2)
    ['b', 'd']
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from .._errors import InvalidInputError, ParameterError

T = TypeVar("T")

LAUNCH_HINT = (
    "launch with 'torchrun --nproc_per_node=N -m xvit bench ...' (it sets RANK, WORLD_SIZE, "
    "LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
)


class RankFailedError(RuntimeError):
    """A rank of a distributed benchmark failed; the message names the rank and images.

    Every rank raises it, so ``torchrun`` ends the job with a failure; the results finished
    before it stay in the output folder and a rerun resumes from them.

    Example:
        >>> from xvit.bench import RankFailedError
        >>> issubclass(RankFailedError, RuntimeError)  # a failed run, not bad input
        True
    """


@dataclass
class Ranks:
    """This process's place in the run (rank 0 of 1 when not distributed).

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this node (picks the GPU).
        owns_group: Whether the runner created the process group (then it destroys it).
        group: The process group for object collectives (None: the default group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (waits for all of them)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.group)
        except RuntimeError as exc:  # torch's DistBackendError (timeout, peer gone)
            raise RankFailedError(
                f"rank {self.rank} of {self.world_size} lost contact with the other ranks "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); another "
                f"rank probably died or hung (see its output). The results written so far "
                f"are kept: run the same command again to resume"
            ) from None
        return out

    def close(self) -> None:
        """Leave the process group if the runner created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ParameterError(
            f"environment variable {name}={raw!r} is not an integer; {LAUNCH_HINT}"
        ) from None


def wants_distributed(distributed: bool | None) -> bool:
    """Whether to run distributed: ``distributed`` if given, else whether a process group is
    initialised or ``torchrun``'s environment says there are several processes.

    Raises:
        ParameterError: ``distributed=True`` without a process group or launcher environment.
    """
    if distributed is False:
        return False
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1 or bool(distributed)
    world = _env_int("WORLD_SIZE")
    launched = world is not None and _env_int("RANK") is not None
    if distributed and not launched:
        raise ParameterError(f"distributed=True needs a process group; {LAUNCH_HINT}")
    return launched and (world or 1) > 1


def _pin(device: str | torch.device | None, local_rank: int) -> str | torch.device | None:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA device, else ``device``."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return device  # the runner reports the bad name
    if dev.type != "cuda" or not torch.cuda.is_available():
        return device
    count = torch.cuda.device_count()
    index = local_rank if count > 1 else 0  # one visible GPU per process (SLURM binding)
    if index >= count:
        raise InvalidInputError(
            f"LOCAL_RANK={local_rank} but this node shows only {count} CUDA devices; start at "
            f"most {count} processes per node (--nproc_per_node) or make more GPUs visible"
        )
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def start(device: str | torch.device | None, timeout: float) -> tuple[Ranks, Any]:
    """Join (or create) the process group and pin this rank's device.

    Args:
        device: The requested device; a CUDA device becomes ``cuda:LOCAL_RANK``.
        timeout: Seconds a rank waits for the others at a synchronisation point.

    Returns:
        This process's :class:`Ranks` and its device.
    """
    import torch.distributed as dist

    local_rank = _env_int("LOCAL_RANK") or 0
    device = _pin(device, local_rank)
    if dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local_rank), device
    on_cuda = device is not None and torch.device(device).type == "cuda"
    backend = "cpu:gloo,cuda:nccl" if on_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
    return ranks, device


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Items ``rank``, ``rank + world_size``, ...: disjoint across ranks, together all of
    them, and the same whatever the batch size."""
    return list(items[rank::world_size])


def _marker(folder: Path, rank: int) -> Path:
    return folder / f"failed.rank{rank}.json"


def clear_failures(folder: Path) -> None:
    """Remove failure markers left by an earlier run (rank 0, before the others start)."""
    for p in folder.glob("failed.rank*.json"):
        p.unlink()


def announce_failure(folder: Path, failure: dict[str, Any]) -> None:
    """Tell the other ranks (and the user) that this rank failed."""
    _marker(folder, failure["rank"]).write_text(json.dumps(failure) + "\n", encoding="utf-8")


def peer_failed(folder: Path) -> bool:
    """Whether some rank announced a failure."""
    return any(folder.glob("failed.rank*.json"))


def failure_message(failures: Sequence[dict[str, Any]], world_size: int, folder: Path) -> str:
    """One message naming every failed rank, its images, method and error."""
    parts = []
    for f in failures:
        images = ", ".join(repr(i) for i in f.get("images") or []) or "(before any image)"
        method = f" with method {f['method']!r}" if f.get("method") else ""
        parts.append(
            f"rank {f['rank']} of {world_size} failed on image(s) {images}{method}: {f['error']}"
        )
    return (
        "; ".join(parts) + f". The results finished before the failure are kept in {folder}: "
        f"fix the cause and run the same command again to resume"
    )


__all__ = [
    "RankFailedError",
    "Ranks",
    "announce_failure",
    "clear_failures",
    "failure_message",
    "peer_failed",
    "shard",
    "start",
    "wants_distributed",
]
