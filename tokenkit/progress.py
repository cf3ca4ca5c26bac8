"""Progress reporting for long loops: periodic absl log lines with rate and ETA.

Log lines (rather than a terminal bar) survive redirection to files and multi-host
log collection, which is where long runs are read.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from absl import logging

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """Formats seconds as `1h02m03s`, `2m03s` or `3.1s`."""
    if seconds != seconds or seconds == float("inf"):  # NaN or unknown
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


class Progress:
    """Counts work done and logs `desc: done/total (pct) rate/s, ETA` every few seconds.

    Use as `for x in Progress.wrap(items, desc="tokenizing", total=n)` or call
    `update(n)` by hand. `unit` names what is counted (items, tokens, steps).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        every_s: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every_s = every_s
        self.enabled = enabled
        self.done = 0
        self._start = time.perf_counter()
        self._last_log = self._start

    @classmethod
    def wrap(
        cls, items: Iterable[T], desc: str, *, total: int | None = None, **kwargs
    ) -> Iterator[T]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        progress = cls(total, desc, **kwargs)
        for item in items:
            yield item
            progress.update(1)
        progress.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def line(self) -> str:
        elapsed = self.elapsed
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            return (
                f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%) "
                f"{rate:,.1f} {self.unit}/s, elapsed {format_duration(elapsed)}, "
                f"ETA {format_duration(eta)}"
            )
        return (
            f"{self.desc}: {self.done} {self.unit} {rate:,.1f} {self.unit}/s, "
            f"elapsed {format_duration(elapsed)}"
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last_log >= self.every_s:
            self._last_log = now
            logging.info("%s", self.line())

    def close(self) -> None:
        if self.enabled:
            logging.info("%s (done)", self.line())
