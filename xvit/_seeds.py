"""The one seed rule of xvit.

Every randomised component (a method that draws masks, a metric that draws noise, the
benchmark runner) takes ``seed``: a non-negative integer, or None for fresh randomness drawn
from torch's global generator (so ``torch.manual_seed`` before a call makes it repeatable).
Where one seed must serve many items (images of a benchmark, images of a batch, masks of a
method), each item's seed is derived from the seed and a stable key of the item, so that
results do not depend on batching, order, device or process. Three derivations are in use,
each keeping the numbers its component has always produced:

- :func:`derive_seed`: a key with a printable name (an image id): the benchmark runner; and
  a metric called with ``seeds=None``, whose image i gets ``derive_seed(seed, i)``.
- :func:`content_seed`: the item's own values (an image's bytes): the random map, so that the
  same image gets the same map in any batch.
- :func:`index_seed`: an item's position in a fixed list (a mask's index): ViT-CX's noise.

A component that draws all its numbers from one generator (RISE's masks) seeds it with
:func:`resolve_seed` of its ``seed`` and derives nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ._constraints import Integer, Literal, Rule

#: Largest seed :func:`resolve_seed` draws (exclusive); seeds given by users may be larger.
DRAWN_SEED_LIMIT = 2**62

#: The constraint of every ``seed`` parameter.
SEED = Rule(Integer(low=0), Literal(None, "fresh randomness from torch's global generator"))

#: The constraint of a ``seed`` parameter that must be given (no fresh randomness).
FIXED_SEED = Integer(low=0)


def resolve_seed(seed: int | None) -> int:
    """The seed of one call: ``seed`` itself, or one drawn from torch's global generator.

    Example:
        >>> resolve_seed(7)
        7
        >>> _ = torch.manual_seed(0); a = resolve_seed(None)
        >>> _ = torch.manual_seed(0); a == resolve_seed(None)
        True
    """
    if seed is not None:
        return seed
    return int(torch.randint(0, DRAWN_SEED_LIMIT, (1,)).item())


def derive_seed(seed: int, key: Any) -> int:
    """A 32-bit seed for the item named ``key`` (an image id, an index), stable across runs,
    batches and processes: the first four bytes (little-endian) of SHA-256 of ``"seed/key"``.

    Example:
        >>> derive_seed(0, "img1") == derive_seed(0, "img1")
        True
        >>> derive_seed(0, "img1") == derive_seed(1, "img1")
        False
    """
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def content_seed(seed: int, data: bytes) -> int:
    """A 64-bit seed for an item known by its values: the first eight bytes (little-endian)
    of SHA-256 of the decimal ``seed`` followed by ``data``.

    Example:
        >>> content_seed(0, b"pixels") == content_seed(0, b"pixels")
        True
        >>> content_seed(0, b"pixels") == content_seed(0, b"other pixels")
        False
    """
    digest = hashlib.sha256(str(seed).encode())
    digest.update(data)
    return int.from_bytes(digest.digest()[:8], "little")


def index_seed(seed: int, index: int) -> int:
    """A 64-bit seed for item ``index`` of a list: numpy's ``SeedSequence(seed)`` spawned
    with key ``(index,)``, so it does not depend on which other items are drawn.

    Example:
        >>> index_seed(9, 5) == index_seed(9, 5), index_seed(9, 5) == index_seed(9, 6)
        (True, False)
    """
    state = np.random.SeedSequence(seed, spawn_key=(int(index),)).generate_state(1, np.uint64)
    return int(state[0])
