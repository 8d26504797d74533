"""Per-image results as JSON Lines, written as they are computed, read back to resume.

One line per (image id, method): the scores of every metric (NaN stored as null), the curves
of the curve metrics, the target and the explanation time. A line is written and flushed as
soon as it is known, so an interrupted run loses at most the line being written.

Reading back is strict: a line that is not a valid record stops the run with an error naming
the file and line, and the file is left untouched. The one exception is an unterminated last
line (the write an interruption cut short): it is dropped with a warning, and the next
record starts on a fresh line.

A distributed run writes one file per rank (``results.rank<R>.jsonl``) beside the
single-process ``results.jsonl``. Records are keyed by (image id, method), never by rank:
:func:`load_results` reads every results file in a folder, so a run resumes from whatever an
earlier run left, whatever its number of ranks, and :func:`consolidate` folds the rank files
into ``results.jsonl`` once a run has finished.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._errors import InvalidInputError

REQUIRED = {"id": str, "method": str, "scores": dict}
RESULTS_FILE = "results.jsonl"
_RANK_FILE = re.compile(r"results\.rank(\d+)\.jsonl")


def _problem(record: Any) -> str | None:
    """Why ``record`` is not a valid result record (None when it is)."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key, kind in REQUIRED.items():
        if not isinstance(record.get(key), kind):
            return f"field {key!r} is missing or not a {kind.__name__}"
    for name, value in record["scores"].items():
        if value is not None and not isinstance(value, (int, float)):
            return f"score {name!r} is not a number"
    if not isinstance(record.get("curves", {}), dict):
        return "field 'curves' is not an object"
    return None


def to_json_number(value: float) -> float | None:
    """NaN and infinities become null, so that the file stays strict JSON."""
    return float(value) if math.isfinite(value) else None


class ResultStore:
    """Append-only JSONL file of per-image results.

    Args:
        path: The results file (created on the first :meth:`append`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._checked_end = False

    def load(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Records by (image id, method); a later line for the same pair is merged over an
        earlier one (:func:`merge_record`).

        Raises:
            InvalidInputError: A line (other than an unterminated last one) is not a valid
                record. The file is not modified.
        """
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        records: dict[tuple[str, str], dict[str, Any]] = {}
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            _put(records, self._parse(raw, number))
        if tail.strip():
            try:
                record = self._parse(tail, len(lines) + 1)
            except InvalidInputError:
                keep = len(data) - len(tail)
                warnings.warn(
                    f"{self.path}: dropping an unfinished last line ({len(tail)} bytes) left by "
                    f"an interrupted run; that result will be computed again",
                    stacklevel=2,
                )
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
            else:
                _put(records, record)
        return records

    def _parse(self, raw: bytes, number: int) -> dict[str, Any]:
        try:
            record = json.loads(raw.decode("utf-8"))
            why = _problem(record)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            why = f"not valid JSON ({exc})"
        if why is not None:
            raise InvalidInputError(
                f"{self.path} line {number} is not a valid result record: {why}. The file was "
                f"left as it is: remove or repair that line to keep the other results, or "
                f"start over with another output folder (or --no-resume, which moves the old "
                f"file aside)"
            )
        return record  # type: ignore[no-any-return]

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line and flush it (a killed run keeps every finished line)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        if not self._checked_end:
            # a valid last line without its newline (another process may have read it)
            if not _ends_with_newline(self.path):
                line = "\n" + line
            self._checked_end = True
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


def _put(records: dict[tuple[str, str], dict[str, Any]], record: dict[str, Any]) -> None:
    key = (record["id"], record["method"])
    records[key] = merge_record(records[key], record) if key in records else record


def _ends_with_newline(path: Path) -> bool:
    """True for a missing or empty file, or one whose last byte is a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True


def rank_file(folder: Path, rank: int) -> Path:
    """The results file that rank ``rank`` of a distributed run appends to."""
    return folder / f"results.rank{rank}.jsonl"


def result_files(folder: Path) -> list[Path]:
    """Every results file in ``folder``: ``results.jsonl``, then the rank files by rank.

    Files moved aside by ``--no-resume`` (``results-<time>.jsonl``,
    ``results.rank<R>-<time>.jsonl``) are not results files.
    """
    ranks = []
    for p in folder.glob("results.rank*.jsonl"):
        match = _RANK_FILE.fullmatch(p.name)
        if match:
            ranks.append((int(match.group(1)), p))
    single = folder / RESULTS_FILE
    return ([single] if single.exists() else []) + [p for _, p in sorted(ranks)]


def merge_record(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two records of one (image, method): ``new``'s fields and scores win, and the scores
    and curves only ``old`` has are kept (a rerun that added a metric loses nothing)."""
    merged = {**old, **new}
    for key in ("scores", "curves"):
        merged[key] = {**(old.get(key) or {}), **(new.get(key) or {})}
    return merged


def load_results(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Records by (image id, method) from every results file in ``folder`` (see
    :func:`result_files`); records of the same pair are combined with :func:`merge_record`,
    in file order, then line order.

    Raises:
        InvalidInputError: A line (other than an unterminated last one) is not a valid
            record. The file is not modified.
    """
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for path in result_files(folder):
        for key, record in ResultStore(path).load().items():
            records[key] = merge_record(records[key], record) if key in records else record
    return records


def consolidate(folder: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` (all of them, e.g. from :func:`load_results`) as ``results.jsonl``
    and remove the rank files they came from.

    The new file is written beside the old one and renamed over it, so an interruption
    leaves either the old files or the new one complete; rank files go only after that.
    """
    rank_files = [p for p in result_files(folder) if p.name != RESULTS_FILE]
    tmp = folder / f".{RESULTS_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / RESULTS_FILE)
    for p in rank_files:
        p.unlink()
