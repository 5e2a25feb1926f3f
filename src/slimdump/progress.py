"""A progress bar for long copies, shown only on a terminal."""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import TextIO


class Progress:
    """``Progress(total, "Copying data")``; call ``update(done)`` often and
    ``finish()`` once.  Prints at most ten times a second, to stderr, and
    only when stderr is a terminal (unless ``force``)."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self.last = 0.0
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.enabled and (now - self.last >= 0.1 or done >= self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = self.done / max(now - self.start, 1e-6) / (1 << 20)
        self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}%  "
                          f"{self.done >> 20}/{self.total >> 20} MiB  {rate:7.1f} MiB/s")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


def human_size(n: int) -> str:
    """A byte count for a summary line: bytes below 1 MiB, else MiB."""
    return f"{n} bytes" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
