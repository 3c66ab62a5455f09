"""Progress display for long loops: a tqdm bar on a terminal, a plain line at least every ``every_s``
seconds elsewhere (CI logs, ``make run > log``), so no stage is silent for minutes.

tqdm with ``disable=None`` hides itself when stderr is not a terminal; that made the text stage of a
redirected pipeline print nothing for 35 minutes. This wrapper keeps the bar where a person watches and
writes timestamped lines where a log is kept.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

EVERY_S = 30.0


class LineProgress:
    """An iterable that prints ``desc: i/total (p%) elapsed, ETA`` at most every ``every_s`` seconds, and a
    last line when the loop ends if any line was printed (short loops stay quiet)."""

    def __init__(
        self, iterable: Iterable[T], desc: str, total: int | None, every_s: float, stream: TextIO | None = None
    ) -> None:
        self.iterable, self.desc, self.total, self.every_s = iterable, desc, total, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.postfix = ""
        self.count = 0

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, start: float, final: bool = False) -> None:
        elapsed = time.perf_counter() - start
        where = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        if self.total and self.count:
            eta = "" if final else f", ETA {elapsed / self.count * (self.total - self.count):.0f}s"
            where += f" ({100 * self.count / self.total:.0f}%){eta}"
        extra = f", {self.postfix}" if self.postfix else ""
        stamp = time.strftime("%H:%M:%S")
        self.stream.write(f"[{stamp}] {self.desc}: {where}, {elapsed:.0f}s{' done' if final else ''}{extra}\n")
        self.stream.flush()

    def __iter__(self) -> Iterator[T]:
        start = last = time.perf_counter()
        printed = False
        for item in self.iterable:
            yield item
            self.count += 1
            now = time.perf_counter()
            if now - last >= self.every_s:
                self._line(start)
                last, printed = now, True
        if printed:
            self._line(start, final=True)


class _Quiet:
    """A do-nothing stand-in with the bar API (``set_postfix``)."""

    def __init__(self, iterable: Iterable[T]) -> None:
        self.iterable = iterable

    def set_postfix(self, **values: object) -> None:
        pass

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable)


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    enabled: bool = True,
    every_s: float = EVERY_S,
    leave: bool = False,
):
    """``iterable`` wrapped for display: tqdm on a terminal, :class:`LineProgress` otherwise, nothing if not
    ``enabled``. The result iterates like ``iterable`` and has ``set_postfix``."""
    if not enabled:
        return _Quiet(iterable)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=leave)
    return LineProgress(iterable, desc, total, every_s)


def say(message: str, enabled: bool = True) -> None:
    """One timestamped line (a step that is not a loop), on stdout when not on a terminal."""
    if enabled and not sys.stderr.isatty():
        sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
        sys.stdout.flush()
