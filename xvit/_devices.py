"""Devices asked for by name (``--device``, ``device=``), checked once, the same way everywhere."""

from __future__ import annotations

import torch

from ._errors import InvalidInputError


def check_device(device: str | torch.device) -> torch.device:
    """The device named ``device``, checked to exist on this machine.

    Raises:
        InvalidInputError: An unknown device name, or CUDA where it is not available.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        xvit._errors.InvalidInputError: unknown device 'gpu'; use cpu, cuda or cuda:N
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} requested but CUDA is not available; use cpu")
    return dev
