"""A progress line: a live bar on a terminal, a plain line every few seconds otherwise (logs, CI)."""
from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, label: str, unit: str = "img", stream=None, every: float = 10.0):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.every = 0.2 if self.tty else every
        self.done = 0
        self.start = self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0
        frac = self.done / self.total if self.total else 1.0
        text = (f"{self.label} {self.done}/{self.total} {frac:4.0%} {rate:,.0f} {self.unit}/s "
                f"ETA {_clock(eta)}")
        if self.tty:
            bar = "#" * int(frac * 24)
            self.stream.write(f"\r{self.label} [{bar:<24}] {text[len(self.label) + 1:]}\033[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> float:
        """Finish the line; returns the rate over the whole run."""
        elapsed = time.perf_counter() - self.start
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        return self.done / max(elapsed, 1e-9)
