"""Progress on long work: a tqdm bar on a terminal, plain lines in log files.

tqdm redraws its bar with carriage returns; written to a file (a CI log, `> run.log`, a pipe) those
frames pile up into one unreadable line. When standard error is not a terminal, `progress` prints
one line as a stage starts and one as it ends (with its time and last postfix) instead.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO


class LineProgress:
    """The part of tqdm's interface this package uses, as one start line and one end line."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 stream: TextIO | None = None):
        self.iterable, self.desc, self.stream = iterable, desc, stream or sys.stderr
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.postfix, self.closed = total, 0, "", False
        self.start = time.perf_counter()
        of = f" ({total} steps)" if total else ""
        print(f"{desc}: started{of}", file=self.stream, flush=True)

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.n += 1
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: done, {self.n} steps in {time.perf_counter() - self.start:.1f} s{extra}",
              file=self.stream, flush=True)


class _Silent(LineProgress):
    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = ""):
        self.iterable, self.total, self.desc, self.n, self.postfix, self.closed = iterable, total, desc, 0, "", True

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True,
             stream: TextIO | None = None) -> Any:
    """A tqdm bar when `stream` (standard error by default) is a terminal, else a `LineProgress`."""
    if not enabled:
        return _Silent(iterable, total, desc)
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, file=stream)
    return LineProgress(iterable, total, desc, stream)
