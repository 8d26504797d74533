"""Datasets for benchmarks: the embedded cluttered digits and ImageNet validation.

Every dataset is a sequence of :class:`Sample` (image, label, boxes, id), built by name
through :func:`get_dataset`; plugins register through the ``xvit.datasets`` entry points.

Example:
    >>> import xvit.data
    >>> "digits" in xvit.data.list_datasets()
    True
"""

from __future__ import annotations

from ._base import Box, LazySamples, Sample, datasets, get_dataset, list_datasets
from .digits import DigitCanvases
from .imagenet import ImageNetVal

datasets.register("digits", DigitCanvases)
datasets.register("imagenet", ImageNetVal)

__all__ = [
    "Box",
    "DigitCanvases",
    "ImageNetVal",
    "LazySamples",
    "Sample",
    "datasets",
    "get_dataset",
    "list_datasets",
]
