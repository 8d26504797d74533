"""The one seed rule of xvit.

Every randomised component (a method that draws masks, a metric that draws noise, the
benchmark runner) takes ``seed``: a non-negative integer, or None for fresh randomness drawn
from torch's global generator (so ``torch.manual_seed`` before a call makes it repeatable).
Where one seed must serve many items (images of a benchmark, images of a batch), each item's
seed is derived from the seed and a stable key of the item with :func:`derive_seed`, so that
results do not depend on batching, order or process.
"""

from __future__ import annotations

import hashlib
from typing import Any

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
