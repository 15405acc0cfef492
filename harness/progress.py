"""The run's progress line: what a person watching a long run (or a CI log) sees while it goes."""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from harness.results import WorkItem


class Progress:
    """One live line on a terminal (rewritten in place), plain lines otherwise (CI logs)."""

    def __init__(self, stream: TextIO | None, total: int):
        self.stream = stream
        self.total = total
        self.done = 0
        self.counts: dict[str, int] = {}
        self.tty = bool(stream is not None and stream.isatty())
        self.started = time.monotonic()

    def update(self, item: WorkItem, status: str) -> None:
        self.done += 1
        kind = status.split("(", 1)[0].strip()
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.stream is None:
            return
        tally = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        elapsed = time.monotonic() - self.started
        line = f"[{self.done}/{self.total} {elapsed:.0f}s] {tally} | {item.scenario}[{item.column}] {status}"
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r\x1b[K" + line[: width - 1])
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None and self.tty and self.done != self.total:
            self.stream.write("\n")
            self.stream.flush()
