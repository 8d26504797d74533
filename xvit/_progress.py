"""Progress reports: a bar on a terminal, plain periodic lines anywhere else.

:class:`Progress` is the display. On a terminal it redraws one bar line in place (carriage
returns, at most ten frames a second); on anything else (a log file, a pipe, a notebook's
captured stream) it writes whole lines only: one each time another tenth of the work is done,
one every ``interval`` seconds in between, and a last one when it closes. Disabled, it writes
nothing.

Long-running code reports through context variables rather than arguments, so that nothing
between the caller and the kernel has to pass a reporter along:

- :func:`reporting_to` makes a display the one that :func:`xvit.explain` calls inside the
  block report to (the benchmark runner shows one bar over all its explanations).
- :func:`metering` installs the :class:`Meter` of one explanation call; the shared
  mask-scoring kernel and the chunked gradient passes (Integrated Gradients, SmoothGrad)
  call :func:`count_forwards` after every chunk, and the meter turns those passes into
  (fractional) images on the display.

Counting only reads numbers: no tensor, random generator or model is touched, so a map is
the same with progress on or off.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

#: Lines (off a terminal) are written each time another STEP of the total is done.
STEP = 0.1
#: ... and at least every INTERVAL seconds while work goes on.
INTERVAL = 60.0
#: A terminal bar is redrawn at most this often (seconds).
REDRAW = 0.1


def format_duration(seconds: float) -> str:
    """A rounded duration for people: seconds, minutes or hours.

    Example:
        >>> format_duration(42), format_duration(1800), format_duration(3 * 3600 + 900)
        ('42 s', '30 min', '3.2 h')
    """
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_count(value: float) -> str:
    """A count that may be fractional: ``3`` or ``2.5``.

    Example:
        >>> format_count(3.0), format_count(2.54), format_count(0.04)
        ('3', '2.5', '0')
    """
    rounded = round(value, 1)
    return f"{rounded:.0f}" if rounded == int(rounded) else f"{rounded:.1f}"


class Progress:
    """A progress display over ``total`` units on ``stream`` (default: ``sys.stderr``).

    Args:
        total: Units of work in all (images, explanations); fractional updates are fine.
        desc: What is running, shown first on every line ("xvit rise").
        unit: Name of one unit ("image", "expl").
        plural: Name of several units (default: ``unit`` + "s").
        stream: Where to write; a bar when ``stream.isatty()``, plain lines otherwise.
        enabled: False writes nothing at all.
        initial: Units already done before this display started (a resumed run); they do
            not count towards the rate.
        interval: Seconds between plain lines while less than a tenth more is done.

    Example:
        >>> import io
        >>> log = io.StringIO()  # not a terminal: whole lines, no carriage returns
        >>> with Progress(4, desc="xvit demo", unit="image", stream=log) as p:
        ...     for _ in range(4):
        ...         p.update(1)
        >>> print(log.getvalue().splitlines()[-1])  # doctest: +ELLIPSIS
        xvit demo: 4/4 images (100%) in 0 s...
        >>> "\\r" in log.getvalue()
        False
    """

    def __init__(
        self,
        total: float,
        *,
        desc: str,
        unit: str = "image",
        plural: str | None = None,
        stream: IO[str] | None = None,
        enabled: bool = True,
        initial: float = 0.0,
        interval: float = INTERVAL,
    ) -> None:
        self.total = float(total)
        self.desc = desc
        self.unit = unit
        self.plural = f"{unit}s" if plural is None else plural
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.n = float(initial)
        self.initial = float(initial)
        self.interval = interval
        self.label: str | None = None
        self.closed = False
        self._tty = enabled and _isatty(self.stream)
        self._start = time.monotonic()
        self._last_write = self._start
        self._last_step = self._step()
        self._last_text = ""
        self._frame_len = 0
        if self._tty:
            self._draw(force=True)

    # --- what callers use -----------------------------------------------------------------
    def update(self, amount: float = 1.0) -> None:
        """Add ``amount`` units of work done (may be fractional)."""
        if self.closed:
            return
        self.n = min(self.n + amount, self.total) if self.total > 0 else self.n + amount
        if not self.enabled:
            return
        if self._tty:
            self._draw()
            return
        if self.total > 0 and self.n >= self.total:
            return  # the last line is written by close()
        now = time.monotonic()
        step = self._step()
        if step > self._last_step or now - self._last_write >= self.interval:
            self._last_step = step
            self._line(self._status(now))

    def set_label(self, label: str | None) -> None:
        """Show ``label`` (e.g. the method at work) after the description."""
        self.label = label
        if self._tty and not self.closed:
            self._draw()

    def write(self, line: str) -> None:
        """Write one whole line (a notice), above the bar on a terminal."""
        if not self.enabled or self.closed:
            return
        if self._tty:
            self._clear()
            self.stream.write(line + "\n")
            self._draw(force=True)
        else:
            self._line(line)

    def close(self) -> None:
        """Write the last line (a terminal bar is finished with a newline)."""
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        if self._tty:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            return
        text = self._summary(time.monotonic())
        if text != self._last_text:
            self._line(text)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- text -----------------------------------------------------------------------------
    def _step(self) -> int:
        if self.total <= 0:
            return 0
        return int(self.n / self.total / STEP + 1e-9)

    def _head(self) -> str:
        return f"{self.desc} [{self.label}]" if self.label else self.desc

    def _counts(self) -> str:
        unit = self.unit if self.total == 1 else self.plural
        pct = 100.0 * self.n / self.total if self.total > 0 else 100.0
        return f"{format_count(self.n)}/{format_count(self.total)} {unit} ({pct:.0f}%)"

    def _rate(self, now: float) -> float:
        elapsed = now - self._start
        done = self.n - self.initial
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    def _rate_text(self, rate: float) -> str:
        if rate <= 0:
            return f"? {self.unit}/s"
        if rate >= 1:
            return f"{rate:.2f} {self.unit}/s"
        return f"{1 / rate:.1f} s/{self.unit}"

    def _eta(self, now: float) -> float:
        rate = self._rate(now)
        return (self.total - self.n) / rate if rate > 0 else math.inf

    def _status(self, now: float) -> str:
        return (
            f"{self._head()}: {self._counts()}, {self._rate_text(self._rate(now))}, "
            f"about {format_duration(self._eta(now))} left"
        )

    def _summary(self, now: float) -> str:
        took = format_duration(now - self._start)
        return f"{self._head()}: {self._counts()} in {took}, {self._rate_text(self._rate(now))}"

    # --- writing --------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_text = text
        self._last_write = time.monotonic()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < REDRAW:
            return
        frac = min(max(self.n / self.total, 0.0), 1.0) if self.total > 0 else 1.0
        elapsed = format_duration(now - self._start)
        tail = (
            f" {format_count(self.n)}/{format_count(self.total)} "
            f"[{elapsed}<{format_duration(self._eta(now))}, {self._rate_text(self._rate(now))}]"
        )
        head = f"{self._head()}: {100 * frac:3.0f}%|"
        columns = shutil.get_terminal_size((80, 24)).columns
        width = max(5, min(40, columns - len(head) - len(tail) - 2))
        filled = int(frac * width)
        frame = f"{head}{'#' * filled}{'-' * (width - filled)}|{tail}"
        self.stream.write("\r" + frame.ljust(self._frame_len))
        self.stream.flush()
        self._frame_len = len(frame)
        self._last_write = now

    def _clear(self) -> None:
        self.stream.write("\r" + " " * self._frame_len + "\r")
        self._frame_len = 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# --- reporting from inside xvit's calls -------------------------------------------------
_DISPLAY: ContextVar[Progress | None] = ContextVar("xvit_progress_display", default=None)
_METER: ContextVar[Meter | None] = ContextVar("xvit_progress_meter", default=None)


@contextmanager
def reporting_to(display: Progress) -> Iterator[Progress]:
    """Within the block, :func:`xvit.explain` reports to ``display`` (and prints no estimate
    line of its own); the previous setting is back on exit, also after an error."""
    token = _DISPLAY.set(display)
    try:
        yield display
    finally:
        _DISPLAY.reset(token)


def current_display() -> Progress | None:
    """The display set by an enclosing :func:`reporting_to`, if any."""
    return _DISPLAY.get()


class Meter:
    """Turns the forwards of one explanation call into images done on a display.

    The call's images are handled in parts (one :meth:`part` per ``attribute`` call). Within
    a part, the forwards the kernel reports (:func:`count_forwards`) move the display by
    ``forwards / expected`` of the part's images, held below the part's end; the part's
    images are complete when its ``attribute`` returns.

    Example:
        >>> import io
        >>> p = Progress(2, desc="x", stream=io.StringIO())
        >>> m = Meter(p, forwards_per_image=10)
        >>> with m.part(2):
        ...     m.forwards(5)  # 5 of the 20 forwards expected for two images
        ...     round(p.n, 2)
        0.5
        >>> p.n
        2.0
    """

    #: Share of a part the kernel's count may reach before the part has returned.
    CAP = 0.99

    def __init__(self, display: Progress, forwards_per_image: float) -> None:
        self.display = display
        self.per_image = float(forwards_per_image)
        self._images = 0
        self._expected = 0.0
        self._seen = 0
        self._shown = 0.0

    @contextmanager
    def part(self, images: int) -> Iterator[None]:
        """Account for one part of ``images`` images; complete when the block ends normally."""
        self._images, self._expected, self._seen, self._shown = (
            images,
            images * self.per_image,
            0,
            0.0,
        )
        yield
        self._show(float(images))

    def expect(self, forwards: int) -> None:
        """The exact number of forwards of the current part, once the method knows it."""
        self._expected = float(forwards)
        self._show(self._fraction() * self._images)

    def forwards(self, count: int) -> None:
        """``count`` more forwards of the current part are done."""
        self._seen += count
        self._show(self._fraction() * self._images)

    def _fraction(self) -> float:
        if self._expected <= 0:
            return 0.0
        return min(self._seen / self._expected, self.CAP)

    def _show(self, images_done: float) -> None:
        if images_done > self._shown:
            self.display.update(images_done - self._shown)
            self._shown = images_done


@contextmanager
def metering(display: Progress, forwards_per_image: float) -> Iterator[Meter]:
    """Install a :class:`Meter` on ``display`` for the block; removed on exit, also after an
    error."""
    meter = Meter(display, forwards_per_image)
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def count_forwards(count: int) -> None:
    """Report ``count`` forwards done to the active meter (nothing when there is none)."""
    meter = _METER.get()
    if meter is not None:
        meter.forwards(count)


def expect_forwards(count: int) -> None:
    """Tell the active meter the exact number of forwards of its current part."""
    meter = _METER.get()
    if meter is not None:
        meter.expect(count)
