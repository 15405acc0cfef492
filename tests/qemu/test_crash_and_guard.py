"""A crash is reported with the kernel's fault lines (harness.crash), and a destination older than 10.0 is
never asked query-migrate while its postcopy listen thread may be tearing the incoming state down
(harness.listen_guard, docs/qemu-bugs.md section 10)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from contract.versions import Version
from harness.binaries import QemuBinary
from harness.crash import crash_record
from harness.listen_guard import LISTEN_DESTROY_LOCKED_SINCE, LISTEN_MAY_FINISH, LISTEN_THREAD
from harness.machine import QemuMachine
from harness.pair import MigrationPair
from harness.probe import host_facts

VM = ["-machine", "q35", "-accel", "tcg", "-m", "64M"]
# The listen thread's name: 7.2's "postcopy/listen"; 8.1 moved the names into migration/migration.h
# (MIGRATION_THREAD_DST_LISTEN "mig/dst/listen" in 10.0.2's source).
LISTEN_THREAD_NAME = {True: LISTEN_THREAD, False: "mig/dst/listen"}
TIMEOUT = 30.0
# Bytes per second of the postcopy phase: an idle 64 MiB firmware-only VM then stays postcopy-active for a while.
POSTCOPY_PACE = 100_000


def test_kernel_fault_line_of_a_real_segfault_is_recorded() -> None:
    """A process that really faults (a NULL read): the record names the signal and carries the kernel's
    line with the faulting thread's name; where the kernel log cannot be read, it says why."""
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"])
    status = child.wait()
    assert status == -signal.SIGSEGV
    record = crash_record(status, child.pid, started)
    assert record is not None and record.signal == "SIGSEGV"
    if record.note.startswith("the kernel log could not be read"):
        pytest.skip(record.note)
    # Whether the kernel reports user faults at all is a host setting (debug.exception-trace): read it, do not
    # assume the host this was written on. Without it, the record must say that nothing was found.
    trace = Path("/proc/sys/debug/exception-trace")
    if trace.exists() and trace.read_text().strip() == "0":
        assert record.kernel == [] and record.note.startswith("no fault report"), record
        return
    assert any(f"[{child.pid}]: segfault at 0 " in line for line in record.kernel), record


def test_exit_statuses_that_are_not_crashes_have_no_record() -> None:
    assert crash_record(0, os.getpid(), 0.0) is None
    assert crash_record(1, os.getpid(), 0.0) is None
    assert crash_record(-signal.SIGKILL, os.getpid(), 0.0) is None  # how the harness ends a stuck QEMU
    assert crash_record(None, os.getpid(), 0.0) is None


def test_qemu_threads_are_named(qemu_binary: QemuBinary) -> None:
    """Every launch has -name debug-threads=on: the kernel's fault line and the guard see thread names."""

    async def names() -> list[str]:
        async with QemuMachine(qemu_binary, VM) as vm:
            return vm.thread_names()

    got = asyncio.run(names())
    # "CPU 0/TCG" with multi-threaded TCG, "ALL CPUs/TCG" without: either way a named vCPU thread.
    assert any(name.endswith("/TCG") for name in got), got


def test_no_destination_query_while_the_listen_thread_may_tear_down(qemu_binary: QemuBinary) -> None:
    """Query-migrate on the destination in a loop through postcopy: before 10.0, not one query reaches QEMU
    while its postcopy/listen thread lives and the source is past the switchover; from 10.0 (the teardown
    takes the BQL) there is no guard, and queries do reach QEMU then (proof that the loop covers the
    window, so the first half can fail)."""
    if not host_facts(qemu_binary, "tcg").userfaultfd:
        pytest.skip(f"no userfaultfd for QEMU {qemu_binary.version} on this host: no postcopy to observe")
    guarded = qemu_binary.version < LISTEN_DESTROY_LOCKED_SINCE
    thread = LISTEN_THREAD_NAME[qemu_binary.version < Version(8, 1)]

    async def scenario() -> list[tuple[bool, str]]:
        seen: list[tuple[bool, str]] = []
        migrating = False
        async with MigrationPair(qemu_binary, VM, VM) as pair:
            assert (pair.destination.query_migrate_guard is not None) == guarded
            qmp = pair.destination.qmp

            async def watched(command: str, arguments: Any = None, **kwargs: Any) -> Any:
                if command == "query-migrate" and migrating:
                    listen = thread in pair.destination.thread_names()
                    seen.append((listen, await pair.source.query_migrate_status()))
                return await qmp(command, arguments, **kwargs)

            pair.destination.qmp = watched  # type: ignore[method-assign]
            for side in ("source", "destination"):
                await pair.set_capabilities(side, {"postcopy-ram": True})
            # Paced on both phases so that postcopy lasts long enough (about a second: the loop below asks many
            # times while the listen thread lives), whatever the host's load.
            await pair.set_parameters("source", {"max-bandwidth": 200_000, "max-postcopy-bandwidth": POSTCOPY_PACE})
            await pair.migrate("tcp")
            migrating = True
            await pair.wait_left_setup(TIMEOUT)
            await pair.start_postcopy()
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                if await pair.destination.query_migrate_status() == "completed":
                    break
            for _ in range(20):  # on past the completion: the teardown follows it
                await pair.destination.query_migrate_status()
            assert await pair.wait_source_end(TIMEOUT) == "completed"
            assert pair.guard_notes == []
        return seen

    seen = asyncio.run(scenario())
    risky = [status for listen, status in seen if listen and status in LISTEN_MAY_FINISH]
    if guarded:
        assert not risky, f"{len(risky)} of {len(seen)} queries reached QEMU during the teardown window"
    else:
        assert risky, f"none of {len(seen)} queries fell in the window: the loop does not cover it"
