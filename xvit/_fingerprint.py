"""Fingerprints that say which model made a result: a hash of its weights.

Example:
    >>> import torch
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> b.load_state_dict(a.state_dict())
    <All keys matched successfully>
    >>> state_dict_hash(a) == state_dict_hash(b)  # the same weights, the same hash
    True
    >>> with torch.no_grad():
    ...     _ = b.bias.add_(1)
    >>> state_dict_hash(a) == state_dict_hash(b)
    False
"""

from __future__ import annotations

import hashlib

import torch


def state_dict_hash(model: torch.nn.Module) -> str:
    """``"sha256:<hex>"`` of a model's state dict: every entry's name, dtype, shape and raw
    bytes, in name order.

    The hash is the same on every device and in every process for the same weights and
    buffers (the bytes are read on the CPU), and changes with any of them; it does not depend
    on the module's hooks, mode or ``requires_grad`` flags. Reading a large model's weights
    takes about as long as copying them to the CPU once.
    """
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        tensor = value.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        raw = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return "sha256:" + digest.hexdigest()
