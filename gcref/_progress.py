"""A progress line on stderr for measures over data and for training.

On by default only when stderr is a terminal (``progress=None``); ``progress=True``
forces it, ``False`` silences it. It writes at most a few lines a second and nothing at
all when off, so it costs nothing in tests and pipelines.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Counts units of work (examples, steps) and reports them on one stderr line.

    Parameters
    ----------
    what : str
        Shown before the count (``"geometric_complexity"``, ``"train"``).
    enabled : bool or None
        ``None``: when ``sys.stderr`` is a terminal.
    total : int, optional
        Known amount of work (steps of a training run), shown as ``n/total``.
    unit : str
    """

    interval = 0.25
    #: Progress lines open now: one nested inside another (the metrics that a training
    #: run records) stays silent unless asked for.
    _open = 0

    def __init__(self, what, enabled=None, *, total=None, unit="examples"):
        if enabled is None:
            enabled = Progress._open == 0 and bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.enabled = enabled
        self.what = what
        self.total = total
        self.unit = unit
        self.count = 0
        self._start = self._last = time.perf_counter()

    def __enter__(self):
        Progress._open += 1
        return self

    def advance(self, n=1):
        """Add ``n`` units; redraw when the last line is old enough."""
        self.count += n
        if self.enabled:
            now = time.perf_counter()
            if now - self._last >= self.interval:
                self._last = now
                self._draw(now, end="")

    def _draw(self, now, end):
        elapsed = max(now - self._start, 1e-9)
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        sys.stderr.write(
            f"\r{self.what}: {done} {self.unit}, {elapsed:.1f} s ({self.count / elapsed:.0f}/s)"
            + end
        )
        sys.stderr.flush()

    def __exit__(self, *exc):
        Progress._open -= 1
        if self.enabled and self.count:
            self._draw(time.perf_counter(), end="\n")
        return False
