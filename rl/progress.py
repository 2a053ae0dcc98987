"""Progress as a few whole lines of text.

Stages run inside Ray workers, and Ray forwards every line a worker prints to the driver's terminal, so a
carriage-return progress bar arrives as hundreds of repeated lines. A `ProgressLine` prints a complete
line only when another ~10 % of the work is done or ~30 s passed since its last line, plus one final line
when it is closed, e.g.

    grpo: train 20/200 (10%) reward=0.412 loss=0.0130 elapsed=35s eta=315s
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Callable, TextIO


class ProgressLine:
    """`update(n)` / `close()` like a tqdm bar; `note(name=value)` sets figures shown on the next line
    (the latest reward or loss). `total` <= 0 means unknown: lines come on the time rule only."""

    def __init__(self, desc: str, total: int, *, every_fraction: float = 0.1, every_s: float = 30.0,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.desc, self.total = desc, int(total or 0)
        self.every_fraction, self.every_s = every_fraction, every_s
        self.out, self.clock = out, clock
        self.done, self.figures = 0, {}
        self.start = self.last_time = clock()
        self.start_done = None  # progress when the first update came (a resumed run starts part-way)
        self.printed_done = -1
        self.next_mark = self._mark_after(0)
        self.closed = False

    def _mark_after(self, done: int) -> float:
        """The next multiple of `every_fraction * total` strictly above `done`."""
        if self.total <= 0:
            return math.inf
        step = max(1.0, self.every_fraction * self.total)
        return (math.floor(done / step) + 1) * step

    def note(self, **figures: float | None) -> None:
        self.figures.update({k: v for k, v in figures.items() if v is not None})

    def update(self, n: int = 1) -> None:
        if self.start_done is None:
            self.start_done = self.done
        self.done += n
        now = self.clock()
        if self.done >= self.next_mark or now - self.last_time >= self.every_s:
            self._print(now)

    def close(self) -> None:
        if not self.closed and self.printed_done != self.done:
            self._print(self.clock(), final=True)
        self.closed = True

    def line(self, now: float | None = None, final: bool = False) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.start
        parts = [self.desc, f"{self.done}/{self.total}" if self.total > 0 else str(self.done)]
        if self.total > 0:
            parts.append(f"({100 * self.done / self.total:.0f}%)")
        parts += [f"{k}={_fmt(v)}" for k, v in self.figures.items()]
        parts.append(f"elapsed={elapsed:.0f}s")
        ran = self.done - (self.start_done or 0)
        if self.total > 0 and 0 < ran and self.done < self.total and not final:  # a stage stopped early has none
            parts.append(f"eta={elapsed / ran * (self.total - self.done):.0f}s")
        return " ".join(parts)

    def _print(self, now: float, final: bool = False) -> None:
        print(self.line(now, final), file=self.out or sys.stdout, flush=True)
        self.last_time, self.printed_done = now, self.done
        self.next_mark = self._mark_after(self.done)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@contextlib.contextmanager
def no_dataset_bars():
    """TRL prepares datasets with `datasets.map`, whose tqdm bars would reach the driver as carriage-return
    noise; they are off while a trainer is built (and restored after)."""
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            ds_logging.enable_progress_bar()
