""" "Did you mean" hints for names that are not known (methods, metrics, parameters, ...)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def similar(name: str, known: Iterable[str], n: int = 2, cutoff: float = 0.7) -> list[str]:
    """The known names most similar to ``name`` regardless of case, best first, as ``known``
    spells them: :func:`difflib.get_close_matches` with its ``n`` and ``cutoff`` (names that
    differ only in case count once towards ``n``).

    Example:
        >>> similar("Tigre cat", ["tiger cat", "Tiger Cat", "tabby"], cutoff=0.6)
        ['tiger cat', 'Tiger Cat']
    """
    by_fold: dict[str, list[str]] = {}
    for choice in dict.fromkeys(known):
        by_fold.setdefault(choice.casefold(), []).append(choice)
    found: list[str] = []
    for folded in difflib.get_close_matches(name.casefold(), list(by_fold), n=n, cutoff=cutoff):
        found += by_fold[folded]
    return found


def close_names(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """The known names closest to ``name``, best first: the same name in another case alone,
    else the most similar names (:func:`similar`) and those it begins.

    Example:
        >>> close_names("gradmsk", ["attention", "gradcam", "gradmask"])
        ['gradmask', 'gradcam']
        >>> close_names("GradMask", ["gradmask"]), close_names("zzz", ["gradmask"])
        (['gradmask'], [])
    """
    choices = sorted(set(known))
    wanted = name.casefold()
    same = [c for c in choices if c.casefold() == wanted]
    if same:  # only the case differs
        return same[:limit]
    found = similar(name, choices)
    if wanted:
        found += [c for c in choices if c.casefold().startswith(wanted)]
    return list(dict.fromkeys(found))[:limit]


def or_list(items: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``: alternatives as a sentence lists them.

    Example:
        >>> or_list(["'x'"]), or_list(["'x'", "'y'", "'z'"])
        ("'x'", "'x', 'y' or 'z'")
    """
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` (or ``'x' or 'y'``) for the closest known names, else ``""``.

    Example:
        >>> did_you_mean("rolout", ["rollout", "rise"])
        " Did you mean 'rollout'?"
        >>> did_you_mean("grad", ["gradcam", "gradmask"])
        " Did you mean 'gradcam' or 'gradmask'?"
    """
    close = close_names(name, known)
    return f" Did you mean {or_list([repr(c) for c in close])}?" if close else ""
