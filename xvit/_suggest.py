""" "Did you mean" hints for names that are not known (methods, metrics, parameters, ...)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_names(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """The known names closest to ``name``, best first: the same name in another case alone,
    else the most similar names (:func:`difflib.get_close_matches`) and those it begins.

    Example:
        >>> close_names("gradmsk", ["attention", "gradcam", "gradmask"])
        ['gradmask', 'gradcam']
        >>> close_names("GradMask", ["gradmask"]), close_names("zzz", ["gradmask"])
        (['gradmask'], [])
    """
    choices = sorted(set(known))
    by_lower: dict[str, list[str]] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), []).append(choice)
    wanted = name.lower()
    if wanted in by_lower:  # only the case differs
        return by_lower[wanted][:limit]
    found = []
    for lower in difflib.get_close_matches(wanted, list(by_lower), n=2, cutoff=0.7):
        found += by_lower[lower]
    if wanted:
        found += [c for c in choices if c.lower().startswith(wanted)]
    return list(dict.fromkeys(found))[:limit]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` (or ``'x' or 'y'``) for the closest known names, else ``""``.

    Example:
        >>> did_you_mean("rolout", ["rollout", "rise"])
        " Did you mean 'rollout'?"
        >>> did_you_mean("grad", ["gradcam", "gradmask"])
        " Did you mean 'gradcam' or 'gradmask'?"
    """
    close = close_names(name, known)
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    listed = ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]
    return f" Did you mean {listed}?"
