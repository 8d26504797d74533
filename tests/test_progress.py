"""Progress and cost estimates: xvit.explain, xvit explain, run_benchmark and the display.

No assertion here depends on how fast the machine is: where an estimate matters, the measured
time per forward is replaced by a fixed one.
"""

from __future__ import annotations

import io
import re

from xvit import _progress


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def counts(text: str, unit: str) -> list[float]:
    """The ``done`` of every ``done/total unit`` in progress lines, in order."""
    return [float(m) for m in re.findall(rf"(\d+(?:\.\d+)?)/\d+ {unit}", text)]


# --- the display ---------------------------------------------------------------------------
def test_plain_lines_off_a_terminal() -> None:
    log = io.StringIO()
    with _progress.Progress(50, desc="xvit job", unit="image", stream=log) as p:
        for _ in range(50):
            p.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 11  # one per tenth of the work at most, then the last one
    assert all(line.startswith("xvit job: ") for line in lines)
    assert "about" in lines[0] and "left" in lines[0]  # counts, rate and time left
    assert lines[-1].startswith("xvit job: 50/50 images (100%) in ")


def test_plain_lines_also_come_every_interval() -> None:
    log = io.StringIO()
    p = _progress.Progress(1000, desc="xvit job", stream=log, interval=0.0)
    for _ in range(3):
        p.update(1)  # far below a tenth, but the interval has passed
    assert counts(log.getvalue(), "images") == [1, 2, 3]


def test_bar_frames_on_a_terminal() -> None:
    tty = FakeTerminal()
    with _progress.Progress(4, desc="xvit job", stream=tty) as p:
        p.set_label("rise")
        p.write("a notice")
        for _ in range(4):
            p.update(1)
    text = tty.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n")
    assert "xvit job [rise]:" in text and "|" in text and "4/4" in text
    assert "a notice\n" in text


def test_disabled_is_silent() -> None:
    for stream in (io.StringIO(), FakeTerminal()):
        p = _progress.Progress(3, desc="x", stream=stream, enabled=False)
        p.write("notice")
        p.update(2)
        p.close()
        assert stream.getvalue() == ""
