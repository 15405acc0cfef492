"""An L1 QEMU that dies by a signal before the lab's runner started: booted once more, then an environment error.

Why: the host's QEMU 10.0.2 under TCG rarely aborts while it boots the L1 kernel (docs/qemu-bugs.md, section 13:
``iotlb_to_section``'s assertion, a use-after-free of a CPU's cached memory dispatch that upstream fixed after
10.0.2). Until the runner reported that it started (``runner.json``, or a first outcome) no L2 QEMU has run, so a
second boot loses nothing and hides nothing. Once it started, a death may come from what an L2 QEMU did (a real
QEMU bug in the lab's reach), and a retry would hide it: that is never retried. Two such deaths in a row mean the
host's QEMU cannot boot the lab now; that is the host's failure, never QEMU's answer to a scenario, so it is a
:class:`harness.errors.HostEnvironmentError` (every item of the batch an error of kind ``environment``, neither a
divergence nor a skip), whose message carries both exit statuses and QEMU's own line.

The decision is :func:`abort_decision` (pure); harness.vfio_lab.boot runs the boots and keeps the failed boot's
files in ``SHARE/l1-tryN/``, next to the retry's.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import HostEnvironmentError

Decision = Literal["accept", "retry", "raise"]
# Boots of one batch in all: the first and one retry.
MAX_BOOTS = 2
# boot.py appends the L1 QEMU's stderr to the serial log after this line.
STDERR_MARK = "--- L1 QEMU stderr ---"
# What QEMU (glibc's assert, g_assert, QEMU's own fatal signal handler) prints when it dies on purpose or by a fault.
_WHY = re.compile(r"Assertion .* failed|assertion failed|code should not be reached|internal SIG[A-Z]+|Segmentation")


def died_by_signal(status: int | None) -> bool:
    """asyncio's returncode is minus the signal number for a process a signal ended; None is still running (or
    killed by the harness on timeout, which boot.py reports as a timeout, not as a death)."""
    return status is not None and status < 0


def abort_decision(status: int | None, runner_started: bool, boot_number: int) -> Decision:
    """What to do after boot number ``boot_number`` (1-based) of a batch ended with ``status``.

    ``accept``: a normal exit, a timeout (None), or any death after the runner started: the caller reports it as
    before (outcomes, or LabRunError). ``retry``: a death by a signal before the runner started, with a boot left.
    ``raise``: the same on the last boot (:class:`L1Aborted`)."""
    if runner_started or not died_by_signal(status):
        return "accept"
    return "retry" if boot_number < MAX_BOOTS else "raise"


def status_text(status: int | None) -> str:
    """``-6 (SIGABRT)``: the number a results file can be grepped for, and the name a person reads."""
    if status is None:
        return "none (still running)"
    if status >= 0:
        return str(status)
    try:
        return f"{status} ({signal.Signals(-status).name})"
    except ValueError:
        return str(status)


def abort_line(log_text: str) -> str | None:
    """QEMU's own words for its death, from the serial log with the L1 QEMU's stderr appended: the last
    assertion (or fatal-signal) line of the stderr, else its last line; without stderr, such a line anywhere in
    the log; None when nothing says why."""
    _, mark, stderr = log_text.rpartition(STDERR_MARK)
    if mark:
        lines = _nonblank(stderr)
        return _last_reason(lines) or (lines[-1] if lines else None)
    return _last_reason(_nonblank(log_text))


def _nonblank(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _last_reason(lines: list[str]) -> str | None:
    matching = [line for line in lines if _WHY.search(line)]
    return matching[-1] if matching else None


@dataclass(frozen=True)
class FailedBoot:
    """One L1 boot that died by a signal before the runner started; ``log`` is its serial log (with stderr)."""

    boot_number: int
    status: int | None
    log: Path
    line: str | None

    def describe(self) -> str:
        why = f": {self.line}" if self.line else " (no assertion or stderr line)"
        return f"boot {self.boot_number} exited with status {status_text(self.status)}{why} (log {self.log})"

    def to_json(self) -> dict[str, object]:
        """For an outcome's ``extra.lab_l1_failed_boots``: a kept result says that its lab needed a second boot."""
        return {"boot": self.boot_number, "status": self.status, "line": self.line, "serial_log": str(self.log)}


class L1Aborted(HostEnvironmentError):
    """The lab's L1 QEMU died by a signal before its runner started, on every boot the batch allows."""

    def __init__(self, failed: Sequence[FailedBoot]) -> None:
        self.failed = tuple(failed)
        statuses = " and ".join(status_text(f.status) for f in self.failed)
        super().__init__(
            "the VFIO lab's L1 QEMU (host QEMU)",
            f"died by a signal before the lab's runner started, {len(self.failed)} boots in a row (exit statuses "
            f"{statuses}): " + "; ".join(f.describe() for f in self.failed) + ". A rare abort of the host QEMU "
            "under TCG (docs/qemu-bugs.md, section 13), not a result of any scenario",
        )
