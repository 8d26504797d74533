"""Class names: where a model's come from, and how a name given as a target finds its index.

timm models carry names in ``pretrained_cfg["label_names"]`` (with optional
``label_descriptions``, as timm's hub configs and :func:`xvit.save_checkpoint` write them), or
have an ImageNet head whose names timm ships (``timm.data.ImageNetInfo``, chosen by the number
of classes as ``timm.data.infer_imagenet_subset`` does). HuggingFace models carry
``config.id2label``; the ``LABEL_<i>`` placeholders HF writes when a config has no labels are
not names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import InvalidInputError
from .._suggest import or_list, similar

#: The label HF configs invent for classes that have no name.
_HF_PLACEHOLDER = re.compile(r"LABEL_\d+")

#: How many close names an unknown class name suggests.
SUGGESTIONS = 3

#: An unknown-name error lists every class of a model with at most this many.
MAX_LISTED = 12


def names_by_index(labels: Any, num_classes: int) -> tuple[str, ...] | None:
    """``labels`` (a sequence, or a mapping index -> name whose keys may be strings) as one
    name per class, missing ones as their index; None when it does not fit ``num_classes``."""
    if isinstance(labels, Mapping):
        try:
            by_index = {int(k): str(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            return None
        if not by_index or not all(0 <= k < num_classes for k in by_index):
            return None
        return tuple(by_index.get(i, str(i)) for i in range(num_classes))
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        if len(labels) != num_classes:
            return None
        return tuple(str(v) for v in labels)
    return None


def timm_class_names(model: Any, num_classes: int) -> tuple[str, ...] | None:
    """The class names of a timm model: its ``pretrained_cfg`` labels, else timm's ImageNet
    names for a 1k/12k/21k/22k head, else None.

    Example:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8)
        >>> timm_class_names(m, m.num_classes)[281]
        'tabby, tabby cat'
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    labels = cfg.get("label_names")
    if labels:
        names = names_by_index(labels, num_classes)
        descriptions = cfg.get("label_descriptions")
        if names is not None and isinstance(descriptions, Mapping):
            names = tuple(str(descriptions.get(n, n)) for n in names)
        if names is not None:
            return names
    from timm.data import infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    return _imagenet_names(subset) if subset else None


@functools.lru_cache(maxsize=4)
def _imagenet_names(subset: str) -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo(subset).label_descriptions())


def hf_class_names(config: Any, num_classes: int) -> tuple[str, ...] | None:
    """The class names in an HF config's ``id2label``; None when it has only placeholders.

    Example:
        >>> from transformers import ViTConfig
        >>> hf_class_names(ViTConfig(num_labels=2), 2) is None
        True
        >>> hf_class_names(ViTConfig(id2label={0: "cat", 1: "dog"}), 2)
        ('cat', 'dog')
    """
    names = names_by_index(getattr(config, "id2label", None) or {}, num_classes)
    if names is None or all(_HF_PLACEHOLDER.fullmatch(n) for n in names):
        return None
    return names


def class_index(name: str, names: Sequence[str] | None, num_classes: int) -> int:
    """The index of the class called ``name``.

    A name matches a class's whole label or one of its comma-separated synonyms
    (``"tabby cat"`` matches ImageNet's ``"tabby, tabby cat"``): exact matches first, then
    case-insensitive ones.

    Raises:
        InvalidInputError: The model has no class names, no class has this name (the error
            suggests close ones), or several do (the error lists them).

    Example:
        >>> class_index("Tabby Cat", ["tiger cat", "tabby, tabby cat"], 2)
        1
    """
    if names is None:
        raise InvalidInputError(
            f"target {name!r} is a class name, but this model carries no class names; pass "
            f"a class index (0 .. {num_classes - 1}) instead"
        )
    for fold in (False, True):
        key = _spelled(name, fold)
        for whole in (True, False):
            hits = [i for i, label in enumerate(names) if key in _spellings(label, fold, whole)]
            if len(hits) == 1:
                return hits[0]
            if hits:
                shown = ", ".join(f"{i} ({names[i]!r})" for i in hits[:6])
                raise InvalidInputError(
                    f"class name {name!r} is ambiguous: classes {shown} carry it; pass the "
                    f"index of the one you mean"
                )
    raise InvalidInputError(f"unknown class name {name!r}; {_suggestions(name, names)}")


def _spelled(text: str, fold: bool) -> str:
    text = text.strip()
    return text.casefold() if fold else text


def _spellings(label: str, fold: bool, whole: bool) -> set[str]:
    """The whole label, or each of its comma-separated synonyms."""
    parts = [label] if whole else label.split(",")
    return {_spelled(part, fold) for part in parts}


def _suggestions(name: str, names: Sequence[str]) -> str:
    """A did-you-mean clause: the closest labels or synonyms with their indices (and, for a
    model with few classes, all of them)."""
    where: dict[str, int] = {}  # every label and synonym -> the first class carrying it
    for i, label in enumerate(names):
        for part in (label, *label.split(",")):
            where.setdefault(part.strip(), i)
    close: dict[int, str] = {}  # one spelling per class, the closest first
    for spelling in similar(name.strip(), where, n=4 * SUGGESTIONS, cutoff=0.6):
        close.setdefault(where[spelling], spelling)
    clauses = []
    if close:
        best = list(close.items())[:SUGGESTIONS]
        clauses.append(f"did you mean {or_list([f'{s!r} ({i})' for i, s in best])}?")
    if len(names) <= MAX_LISTED:
        clauses.append("the model's classes are " + ", ".join(repr(n) for n in names))
    elif not close:
        clauses.append(f"pass one of the model's {len(names)} class names, or an index")
    return " ".join(clauses)
