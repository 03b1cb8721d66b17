"""The one progress display of prepare, stats and train: tqdm's live bar on a terminal, a plain line every few
seconds when the output is a file (CI logs, nohup), so a log holds readable lines instead of carriage returns.

Messages go through `Progress.write`, which prints them above a live bar instead of through it.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, unit: str = "img", stream=None, every: float = 10.0,
                 enabled: bool = True, initial: int = 0):
        from tqdm import tqdm
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.every, self.postfix = every, ""
        self.start = self._last = time.perf_counter()
        # the live bar draws itself; a file gets format_meter's same text as whole lines (see update)
        self.bar = tqdm(total=total, desc=label, unit=unit, file=self.stream, disable=not self.live,
                        dynamic_ncols=True, unit_scale=False, leave=True, initial=initial)
        self.total, self.label, self.unit, self.done, self.initial = total, label, unit, initial, initial

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.postfix = note
            self.bar.set_postfix_str(note, refresh=False)
        if self.live:
            self.bar.update(n)
            return
        now = time.perf_counter()
        # total None: a count that grows (files found while listing), lines every `every` seconds only
        finished = self.total is not None and self.done >= self.total
        if self.enabled and (now - self._last >= self.every or finished):
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        from tqdm import tqdm
        text = tqdm.format_meter(self.done, self.total, now - self.start, ncols=0, prefix=self.label,
                                 unit=self.unit, unit_scale=False, postfix=self.postfix or None,
                                 initial=self.initial)
        self.stream.write(text + "\n")
        self.stream.flush()

    def write(self, text: str) -> None:
        """A message line, above the live bar (printed to stdout, as the commands' other output is)."""
        if not self.enabled:
            return
        if self.live:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> float:
        """Finish the display; returns the rate over the whole run."""
        self.bar.close()
        return (self.done - self.initial) / max(time.perf_counter() - self.start, 1e-9)
