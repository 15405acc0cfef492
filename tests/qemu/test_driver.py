"""The real-QEMU driver (harness.machine, harness.pair) against every discovered QEMU binary.

Each test runs real QEMU processes (no guest OS: firmware only, TCG) and asserts QEMU's statuses, runstates
and exact messages. Expected values that differ per version cite the QEMU function or
docs/real-qemu-facts.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from contract.host import HostFacts
from contract.outcome import VmState
from contract.versions import Version
from harness import procutil
from harness.binaries import QemuBinary
from harness.errors import QemuLaunchError, QmpCommandError, QmpTimeout
from harness.machine import QemuMachine
from harness.pair import MigrationPair
from harness.qemu_stderr import qemu_error_message, strip_qemu_prefixes

T = TypeVar("T")
VM = ["-machine", "q35", "-accel", "tcg", "-m", "256M"]
TIMEOUT = 30.0
# Slow enough that precopy of an idle 256 MiB VM (about 1 MiB on the wire: mostly zero pages) takes about
# two seconds, so the migration is reliably still "active" when the test acts on it.
SLOW_BANDWIDTH = 512 * 1024
FILE_URI_SINCE = Version(8, 2)  # the file: migration URI (7.2: "Parameter 'uri' expects a valid migration protocol")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def completed_source_events(binary: QemuBinary) -> list[str]:
    # 10.0+ always passes through "device" on the way to completed (migration_completion, commit 4881411136).
    if binary.version >= Version(10, 0):
        return ["setup", "active", "device", "completed"]
    return ["setup", "active", "completed"]


async def _events_on(pair: MigrationPair) -> None:
    for side in ("source", "destination"):
        await pair.set_capabilities(side, {"events": True})


# ------------------------------------------------------------------------------------------ pure logic


def test_prefixes_are_stripped_exactly() -> None:
    argv = ["/usr/bin/qemu-system-x86_64", "-nodefaults", "-device", "nvme,serial=x", "-only-migratable"]
    line = (
        "qemu-system-x86_64: -device nvme,serial=x: Device nvme is not migratable, but --only-migratable was specified"
    )
    assert strip_qemu_prefixes(line, argv) == "Device nvme is not migratable, but --only-migratable was specified"
    stderr = (
        "qemu-system-x86_64: -device nvme,serial=x: warning: something harmless\n"
        f"{line}\n"
        "Try 'qemu-system-x86_64 --help' for more information\n"
    )
    assert qemu_error_message(stderr, argv) == ("Device nvme is not migratable, but --only-migratable was specified")
    # A message without a location keeps everything after the program name, colons included.
    assert strip_qemu_prefixes("qemu-system-x86_64: load of migration failed: Invalid argument", argv) == (
        "load of migration failed: Invalid argument"
    )


# ------------------------------------------------------------------------------------------ precopy


@pytest.mark.parametrize("transport", ["tcp", "unix", "file"])
def test_precopy(qemu_binary: QemuBinary, transport: str) -> None:
    async def scenario() -> tuple[VmState | None, VmState | None, list[str], list[str]]:
        async with MigrationPair(qemu_binary, VM, VM) as pair:
            await _events_on(pair)
            await pair.migrate(transport)
            assert await pair.wait_source_end(TIMEOUT) == "completed"
            await pair.load_stream()  # file: now feed the destination
            assert await pair.wait_destination_end(TIMEOUT) == "completed"
            source, destination = await pair.final_states()
            return source, destination, pair.source.migration_events(), pair.destination.migration_events()

    if transport == "file" and qemu_binary.version < FILE_URI_SINCE:

        async def refused() -> tuple[str, VmState | None]:
            async with MigrationPair(qemu_binary, VM, VM) as pair:
                with pytest.raises(QmpCommandError) as info:
                    await pair.migrate("file")
                return info.value.desc, await pair.final_state("source")

        desc, source = run(refused())
        # 7.2-8.1: unknown protocol after migrate_init, which moves setup -> failed (docs/real-qemu-facts.md
        # migrate-order, step 1)
        assert desc == "Parameter 'uri' expects a valid migration protocol"
        assert source == VmState("failed", "running")
        return
    source, destination, source_events, destination_events = run(scenario())
    assert source == VmState("completed", "postmigrate")
    assert destination == VmState("completed", "running")
    assert source_events == completed_source_events(qemu_binary)
    assert destination_events == ["setup", "active", "completed"]


# ------------------------------------------------------------------------------------------ postcopy


def _probed_host(binary: QemuBinary) -> HostFacts:
    from harness.probe import host_facts

    return host_facts(binary, "tcg")  # the VMs here run TCG (VM)


async def _refusal(binary: QemuBinary, side: str, capability: str) -> str:
    """QEMU's refusal of ``capability`` on ``side`` of a pair (the capability the host cannot back)."""
    async with MigrationPair(binary, VM, VM) as pair:
        with pytest.raises(QmpCommandError) as info:
            await pair.set_capabilities(side, {capability: True})
        return info.value.desc


def test_postcopy_really_switches(qemu_binary: QemuBinary) -> None:
    """migrate-start-postcopy while precopy is throttled: the switch happens before precopy could finish.

    Without a guest OS the RAM is almost all zero pages, so an unthrottled precopy of 256 MiB completes
    in ~50 ms and a start-postcopy would usually come too late. With max-bandwidth at 512 KiB/s precopy
    needs about two seconds for the ~1 MiB it sends, and postcopy then runs unthrottled
    (max-postcopy-bandwidth defaults to 0 = unlimited), so the test is both reliable and fast.

    Where harness.probe finds no userfaultfd for this QEMU, the destination must refuse postcopy instead
    (migrate_caps_check): that is checked, rather than assuming every host can do postcopy.
    """
    if not _probed_host(qemu_binary).userfaultfd:
        desc = run(_refusal(qemu_binary, "destination", "postcopy-ram"))
        assert desc.startswith("Postcopy is not supported"), desc
        return

    async def scenario() -> tuple[VmState | None, VmState | None, list[str], list[str], dict[str, Any]]:
        async with MigrationPair(qemu_binary, VM, VM) as pair:
            for side in ("source", "destination"):
                await pair.set_capabilities(side, {"events": True, "postcopy-ram": True})
            await pair.set_parameters("source", {"max-bandwidth": SLOW_BANDWIDTH})
            await pair.migrate("tcp")
            assert await pair.wait_left_setup(TIMEOUT) == "active"
            await pair.start_postcopy()
            assert await pair.wait_source_end(TIMEOUT) == "completed"
            assert await pair.wait_destination_end(TIMEOUT) == "completed"
            ram = (await pair.source.query_migrate())["ram"]
            source, destination = await pair.final_states()
            return source, destination, pair.source.migration_events(), pair.destination.migration_events(), ram

    source, destination, source_events, destination_events, ram = run(scenario())
    assert "postcopy-active" in source_events
    assert destination_events == ["setup", "active", "postcopy-active", "completed"]
    assert ram["postcopy-bytes"] > 0
    assert source == VmState("completed", "postmigrate")
    assert destination == VmState("completed", "running")


# ------------------------------------------------------------------------------------------ background snapshot


def test_background_snapshot_restored_into_destination(qemu_binary: QemuBinary) -> None:
    """A background snapshot is a ``migrate`` into a file while the source keeps running; the file then
    loads into the destination. 7.2 has no file: URI, so it writes the file through exec:cat. Where
    harness.probe finds no UFFD write-protect for this QEMU, the source must refuse it instead."""
    if not _probed_host(qemu_binary).uffd_wp:
        desc = run(_refusal(qemu_binary, "source", "background-snapshot"))
        assert desc == "Background-snapshot is not supported by host kernel", desc
        return
    transport = "file" if qemu_binary.version >= FILE_URI_SINCE else "exec"

    async def scenario() -> tuple[VmState | None, VmState | None, list[str]]:
        async with MigrationPair(qemu_binary, VM, VM) as pair:
            await _events_on(pair)
            await pair.set_capabilities("source", {"background-snapshot": True})
            await pair.migrate(transport)
            assert await pair.wait_source_end(TIMEOUT) == "completed"
            assert pair.stream_file is not None and pair.stream_file.stat().st_size > 0
            await pair.load_stream()
            assert await pair.wait_destination_end(TIMEOUT) == "completed"
            source, destination = await pair.final_states()
            return source, destination, pair.source.migration_events()

    source, destination, source_events = run(scenario())
    # bg_migration_thread: setup -> active -> completed, never device; the VM runs on.
    assert source_events == ["setup", "active", "completed"]
    assert source == VmState("completed", "running")
    assert destination == VmState("completed", "running")


# ------------------------------------------------------------------------------------------ refusals


def test_capability_conflict_refused_at_set_capabilities(qemu_binary: QemuBinary) -> None:
    async def scenario() -> tuple[QmpCommandError, dict[str, bool], VmState | None]:
        async with QemuMachine(qemu_binary, VM, name="source") as vm:
            caps = [{"capability": "postcopy-ram", "state": True}, {"capability": "x-ignore-shared", "state": True}]
            with pytest.raises(QmpCommandError) as info:
                await vm.qmp("migrate-set-capabilities", capabilities=caps)
            now = {c["capability"]: c["state"] for c in await vm.qmp("query-migrate-capabilities")}
            return info.value, now, VmState(await vm.query_migrate_status(), await vm.runstate())

    error, caps, state = run(scenario())
    assert error.desc == "Postcopy is not compatible with ignore-shared"  # rule d, all versions
    assert error.error_class == "GenericError"
    assert error.command == "migrate-set-capabilities"
    # All-or-nothing: neither capability was committed (qmp_migrate_set_capabilities).
    assert caps["postcopy-ram"] is False and caps["x-ignore-shared"] is False
    assert state == VmState("none", "running")


def test_migrate_refused_by_unmigratable_device(qemu_binary: QemuBinary) -> None:
    nvme = [*VM, "-device", "nvme,serial=deadbeef"]

    async def scenario() -> tuple[str, VmState | None, list[str]]:
        async with MigrationPair(qemu_binary, nvme, nvme) as pair:
            await _events_on(pair)
            with pytest.raises(QmpCommandError) as info:
                await pair.migrate("tcp")
            return info.value.desc, await pair.final_state("source"), pair.source.migration_events()

    desc, source, events = run(scenario())
    # -nodefaults q35: the first free PCI slot is 00:01.0 (migration_is_blocked: "<qdev path>/<vmsd name>").
    assert desc == "State blocked by non-migratable device '0000:00:01.0/nvme'"
    assert source == VmState("none", "running")  # refused before migrate_init: no state change, no event
    assert events == []


def test_only_migratable_refuses_unmigratable_device_at_start(qemu_binary: QemuBinary) -> None:
    machine = QemuMachine(qemu_binary, [*VM, "-only-migratable", "-device", "nvme,serial=deadbeef"], name="source")

    with pytest.raises(QemuLaunchError) as info:
        run(machine.launch())
    error = info.value
    assert error.message == "Device nvme is not migratable, but --only-migratable was specified"
    assert error.exit_status == 1
    assert error.argv[0] == qemu_binary.path and "-only-migratable" in error.argv
    assert "qemu-system-x86_64: -device nvme,serial=deadbeef: " in error.stderr
    assert not machine.is_alive


def test_destination_killed_mid_migration_leaves_source_running(qemu_binary: QemuBinary) -> None:
    async def scenario() -> tuple[str, str | None, VmState | None, VmState | None, int | None]:
        async with MigrationPair(qemu_binary, VM, VM) as pair:
            await _events_on(pair)
            await pair.set_parameters("source", {"max-bandwidth": SLOW_BANDWIDTH})
            await pair.migrate("tcp")
            assert await pair.wait_left_setup(TIMEOUT) == "active"
            await pair.destination.kill()
            status = await pair.wait_source_end(TIMEOUT)
            desc = (await pair.source.query_migrate()).get("error-desc")
            source, destination = await pair.final_states()
            return status, desc, source, destination, pair.destination.exit_status

    status, desc, source, destination, exit_status = run(scenario())
    assert status == "failed"
    # Which errno the source's next write sees depends on the kernel: EPIPE if the killed peer had read
    # everything, ECONNRESET if unread data was still queued at its socket (then it answers with RST).
    assert desc in ("Unable to write to socket: Broken pipe", "Unable to write to socket: Connection reset by peer")
    # A failure before the switchover stop leaves the source running (migration_iteration_finish).
    assert source == VmState("failed", "running")
    assert destination is None
    assert exit_status == -9


# ------------------------------------------------------------------------------------------ cleanup nets

_ORPHAN_SCRIPT = """
import asyncio, sys
from harness.binaries import load_binary
from harness.machine import QemuMachine

async def main() -> None:
    vm = QemuMachine(load_binary(sys.argv[1]), ["-machine", "q35", "-accel", "tcg", "-m", "64M", "-S"], name="orphan")
    await vm.launch()
    print(vm.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_qemu_dies_with_its_starter(qemu_binary: QemuBinary, signal_name: str) -> None:
    """SIGKILL of the starter: the kernel's PDEATHSIG kills QEMU. SIGTERM: the driver's handler kills
    every registered QEMU, then the default action terminates the starter."""
    root = Path(__file__).resolve().parents[2]
    starter = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, qemu_binary.path],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert starter.stdout is not None
        qemu_pid = int(starter.stdout.readline())
        assert procutil.pid_alive(qemu_pid)
        starter.send_signal(getattr(signal, signal_name))
        starter.wait(10)
        deadline = time.monotonic() + 5
        while procutil.pid_alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procutil.pid_alive(qemu_pid), f"QEMU {qemu_pid} survived {signal_name} of its starter"
        expected = -signal.SIGKILL if signal_name == "SIGKILL" else -signal.SIGTERM
        assert starter.returncode == expected
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()


# ------------------------------------------------------------------------------------------ probes


def test_probe_reads_what_the_binary_has(qemu_binary: QemuBinary) -> None:
    """What the binary has, by version; what the host has is another matter (KVM, -cpu, Linux boot): the
    probe's answer there is checked against the test's own look in tests/qemu/test_probes.py, never against
    the host this was written on."""
    from harness.probe import choose_accel, probe_binary, probe_host
    from harness.qemus import format_qemus

    probe = probe_binary(qemu_binary)
    assert probe.error is None
    assert {"postcopy-ram", "background-snapshot", "events"} <= set(probe.capabilities)
    # switchover-ack and mapped-ram arrived in 8.1 and 9.0 (qapi/migration.json MigrationCapability)
    assert ("switchover-ack" in probe.capabilities) == (qemu_binary.version >= Version(8, 1))
    assert ("mapped-ram" in probe.capabilities) == (qemu_binary.version >= Version(9, 0))
    assert probe.has_device("nvme") and probe.has_device("vfio-pci")
    # vfio-pci's migration switch: x-enable-migration (bool) until 8.0, enable-migration (OnOffAuto) from 8.1
    expected = "enable-migration" if qemu_binary.version >= Version(8, 1) else "x-enable-migration"
    assert expected in probe.vfio_pci_properties
    # `migconform qemus` shows what the probes found, whatever it is on this host.
    table = format_qemus([qemu_binary])
    assert str(qemu_binary.version) in table and qemu_binary.path in table
    assert f"KVM: {probe.kvm.reason}" in table
    for cpu, result in probe.kvm.attempts:
        assert f"-cpu {cpu}: {result}" in table
    auto, why = choose_accel("auto", probe, probe_host())
    assert f"accel auto -> {auto}: {why}" in table
    assert "boots Linux under KVM: " in table


def test_a_qemu_that_stops_answering_is_still_ended(qemu_binary: QemuBinary) -> None:
    """A QEMU whose monitor never answers (SIGSTOP here; seen for real: a monitor blocked behind a hung
    object-add during a migration) times out the command with an error naming the side, the command and
    the process state, and shutdown still ends it (quit, SIGTERM, then SIGKILL, each bounded)."""

    async def scenario() -> tuple[str, int | None]:
        vm = QemuMachine(qemu_binary, VM, name="source", command_timeout=0.5)
        await vm.launch()
        assert vm.pid is not None
        try:
            os.kill(vm.pid, signal.SIGSTOP)
            with pytest.raises(QmpTimeout) as info:
                await vm.qmp("query-status")
        finally:
            await vm.shutdown(timeout=0.3, term_timeout=0.2)
        return str(info.value), vm.exit_status

    message, status = run(scenario())
    assert message.startswith("source QEMU did not answer query-status within 0.5 s (process state: stopped; log: ")
    assert status == -signal.SIGKILL
