"""The sample type every dataset yields, and the dataset registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from .._errors import ParameterError
from .._registry import Registry

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    """One image with its label and the boxes of the labelled objects.

    Attributes:
        image: The RGB image at its original resolution.
        label: The class index.
        boxes: ``(x0, y0, x1, y1)`` boxes of the label's objects, in pixels of ``image``.
            Half-open, like array slicing: pixel column ``i`` and row ``j`` (0-based) lie in
            a box when ``x0 <= i < x1`` and ``y0 <= j < y1``, so for integer boxes
            ``array[y0:y1, x0:x1]`` is exactly the boxed region. ``()`` when unknown.
        id: A stable key, unique within its dataset (runs resume by it).

    Example:
        >>> from PIL import Image
        >>> s = Sample(Image.new("RGB", (64, 64)), label=7, boxes=((8, 8, 24, 30),), id="a")
        >>> s.image.crop(s.boxes[0]).size  # half-open boxes crop exactly the object
        (16, 22)
    """

    image: Any
    label: int
    boxes: tuple[Box, ...]
    id: str


class LazySamples(Sequence[Sample]):
    """A sequence whose samples are made (or read from disk) when indexed.

    Subclasses set ``_length`` and implement :meth:`_make`.

    Example:
        >>> from PIL import Image
        >>> class Squares(LazySamples):
        ...     _length = 3
        ...     def _make(self, index):
        ...         image = Image.new("RGB", (8, 8))
        ...         return Sample(image, index % 2, ((0, 0, 4, 4),), f"sq{index}")
        >>> data = Squares()
        >>> len(data), data[-1].id, [s.label for s in data[0:2]]
        (3, 'sq2', [0, 1])
    """

    _length: int = 0

    def _make(self, index: int) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(len(self)))]
        if isinstance(index, bool) or not isinstance(index, int):
            try:
                index = int(index.__index__())  # numpy integers
            except AttributeError:
                raise TypeError(
                    f"dataset indices must be integers or slices, not {type(index).__name__}"
                ) from None
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} is out of range for {n} samples")
        return self._make(index % n if n else index)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self._make(i)


DatasetFactory = Callable[..., Sequence[Sample]]

#: Datasets by name: name -> factory(**kwargs) returning a sequence of :class:`Sample`.
#: Plugins register through the ``xvit.datasets`` entry-point group.
datasets: Registry[DatasetFactory] = Registry("dataset", group="xvit.datasets")


def get_dataset(name: str, **kwargs: Any) -> Sequence[Sample]:
    """Build a registered dataset.

    Args:
        name: A name from :func:`list_datasets` (``"digits"``, ``"imagenet"``, plugins).
        **kwargs: The dataset's options; unknown names raise an error listing valid ones.

    Returns:
        A sequence of :class:`Sample`, each made when indexed.

    Raises:
        UnknownNameError: No dataset has that name.
        ParameterError: An option is unknown or out of range.

    Example:
        >>> import xvit.data
        >>> ds = xvit.data.get_dataset("digits", split="test", n=3, seed=0)
        >>> len(ds), ds[0].image.size
        (3, (64, 64))
    """
    factory = datasets.get(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        signature = None
    if signature is not None:
        params = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(kwargs) - set(params))
        if unknown and not takes_any:
            valid = ", ".join(n for n, p in params.items() if p.kind is not p.VAR_POSITIONAL)
            raise ParameterError(
                f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; its options "
                f"are: {valid or '(none)'}"
            )
    return factory(**kwargs)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, optionally filtered by a wildcard such as ``"dig*"``.

    Example:
        >>> import xvit.data
        >>> xvit.data.list_datasets()
        ['digits', 'imagenet']
    """
    return datasets.names(pattern)
