"""What the host knows about a QEMU that died by a signal: which thread faulted, where, with which signal.

A destination that "exited with status -11" is a real QEMU crash and a divergence, but a QEMU developer cannot
act on the exit status alone, and a CI run keeps no core file. The kernel logs every fatal fault of a user
thread (``debug.exception-trace``, on by default) as ``<comm>[<tid>]: segfault at ADDR ip IP sp SP error N
in <file>[<start>+<size>]``; every QEMU the harness starts runs with ``-name debug-threads=on``, so ``comm``
names the QEMU thread (``postcopy/listen``, ``CPU 0/TCG``, ``live_migration``; the main loop keeps the
program's name). The crash record keeps those lines: the offset of ``ip`` in the mapped file is what
``addr2line`` needs with the binary's debug symbols.

The lines are matched by time (the VM's lifetime) and thread id, not by file name (a fault inside libc is
reported "in libc.so.6") nor by process id alone: the kernel prints the faulting thread's id, which is the
process id only for the main thread. Threads get ids after their process, so a line whose id is below the
VM's pid is another process's. Another process that faulted within the lifetime with a higher id would be
listed too; the record says when there is more than one line.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

# Signals that mean QEMU faulted or aborted itself, as opposed to being ended (SIGKILL/SIGTERM by us).
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGTRAP})
KERNEL_LOG_TIMEOUT_S = 2.0
# The kernel's fault reports (arch/x86/mm/fault.c show_signal_msg, arch/x86/kernel/traps.c), e.g.
# "[ 9381.03] postcopy/listen[20280]: segfault at 8 ip 000055d0c0a1b2c3 sp ... error 4 in qemu-system-x86_64[...]".
_FAULT = re.compile(
    r"^\[\s*(?P<stamp>\d+\.\d+)\]\s+(?P<text>\S.*\[(?P<tid>\d+)\]: (?:segfault at|general protection|trap ).*)$"
)


@dataclass(frozen=True)
class CrashRecord:
    """A QEMU that died by one of :data:`CRASH_SIGNALS`: the signal and the kernel's fault lines from its lifetime."""

    signal: str
    kernel: list[str] = field(default_factory=list)
    note: str = ""

    def as_extra(self) -> dict[str, object]:
        record: dict[str, object] = {"signal": self.signal, "kernel": list(self.kernel)}
        if self.note:
            record["note"] = self.note
        return record


def signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


def kernel_log() -> tuple[list[str], str]:
    """The kernel log (``dmesg``), or ([], why not): a host without access to it still reports the signal."""
    try:
        result = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=KERNEL_LOG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"the kernel log could not be read: {exc}"
    if result.returncode != 0:
        return [], f"the kernel log could not be read: {result.stderr.strip() or f'dmesg exited {result.returncode}'}"
    return result.stdout.splitlines(), ""


def fault_lines(log: list[str], pid: int, since: float, until: float) -> list[str]:
    """Fault reports of a thread id >= ``pid`` stamped within [since, until] (CLOCK_MONOTONIC seconds, the
    clock of the kernel log's stamps), without the stamp."""
    found: list[str] = []
    for line in log:
        match = _FAULT.match(line)
        if match is not None and int(match["tid"]) >= pid and since <= float(match["stamp"]) <= until:
            found.append(match["text"])
    return found


def crash_record(status: int | None, pid: int | None, started: float | None) -> CrashRecord | None:
    """The crash record of a QEMU that exited with ``status`` (negative: by a signal), or None when it did
    not crash. ``started`` is the launch time on :func:`time.monotonic`."""
    if status is None or pid is None or status >= 0 or -status not in {int(s) for s in CRASH_SIGNALS}:
        return None
    log, why = kernel_log()
    since = (started if started is not None else 0.0) - 1.0
    lines = fault_lines(log, pid, since, time.monotonic() + 1.0)
    note = why
    if not note and not lines:
        note = "no fault report in the kernel log during the VM's lifetime (an abort() prints none)"
    elif len(lines) > 1:
        note = "several fault reports during the VM's lifetime (another process may have faulted too)"
    return CrashRecord(signal_name(status), lines, note)
