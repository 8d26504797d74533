"""Per-image results as JSON Lines, written as they are computed, read back to resume.

One line per (image id, method): the scores of every metric (NaN stored as null), the curves
of the curve metrics, the target and the explanation time. A line is written and flushed as
soon as it is known, so an interrupted run loses at most the line being written.

Reading back is strict: a line that is not a valid record stops the run with an error naming
the file and line, and the file is left untouched. The one exception is an unterminated last
line (the write an interruption cut short): it is dropped with a warning, and the next
record starts on a fresh line.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from .._errors import InvalidInputError

REQUIRED = {"id": str, "method": str, "scores": dict}


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
        self._needs_newline = False

    def load(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Records by (image id, method); a later line for the same pair replaces an earlier.

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
            record = self._parse(raw, number)
            records[(record["id"], record["method"])] = record
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
                records[(record["id"], record["method"])] = record
                self._needs_newline = True
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
        with open(self.path, "a", encoding="utf-8") as f:
            if self._needs_newline:
                f.write("\n")
                self._needs_newline = False
            f.write(line)
            f.flush()
