"""Scenario files through harness.executor.execute() against every discovered QEMU binary.

The scenarios are TOML as users write them (loaded by harness.loader), and the assertions are the
contract's outcome fields: verdict, stage, QEMU's exact error, and each side's status and runstate.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.outcome import Outcome, VmState
from contract.scenario import DeviceSpec
from contract.versions import Version
from harness.binaries import QemuBinary
from harness.execution.preflight import NO_VFIO_PROVIDER
from harness.executor import run_scenario
from harness.loader import load_scenario
from harness.pair import MigrationPair
from harness.suite import SUITE_DIR
from harness.vfio.allocator import AllocatedDevice
from reference_impl.loadvm import RAM_LOAD_ERROR


def run_toml(tmp_path: Path, binary: QemuBinary, name: str, text: str, **kwargs: object) -> Outcome:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return run_scenario(load_scenario(path), binary, workdir=tmp_path / "work", timeout=30.0, **kwargs)  # type: ignore[arg-type]


def test_precopy_completes(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    outcome = run_toml(
        tmp_path, qemu_binary, "precopy", '[migration]\ncapabilities = { events = true }\ntransport = "tcp"\n'
    )
    assert outcome.to_json()["verdict"] == "completed", outcome.to_json()
    assert outcome.stage is None and outcome.error is None
    assert outcome.source == VmState("completed", "postmigrate")
    assert outcome.destination == VmState("completed", "running")
    assert outcome.qemu_version == str(qemu_binary.version)
    # auto is whatever harness.probe.choose_accel picks on this host (TCG on one, KVM on another).
    from harness.probe import choose_accel, probe_binary, probe_host

    auto, why = choose_accel("auto", probe_binary(qemu_binary), probe_host())
    assert outcome.accel == auto, why
    # events is set on the source only (it is not among the capabilities the destination must share).
    # Measured: 7.2's destination sends MIGRATION "setup" at migrate-incoming even with events off.
    assert outcome.events is not None and outcome.events["source"][-1] == "completed"
    measured = {"7.2": ["setup"], "10.0": []}.get(qemu_binary.version.short)
    if measured is not None:  # versions in between were not measured
        assert outcome.events["destination"] == measured
    assert (tmp_path / "work" / "source.log").exists()


def test_startup_refusal_starts_no_destination(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    outcome = run_toml(
        tmp_path,
        qemu_binary,
        "only-migratable",
        '[vm]\nonly-migratable = true\nargs = ["-device", "nvme,serial=n0"]\n[migration]\n',
    )
    assert (outcome.verdict, outcome.stage) == ("refused", "startup")
    assert outcome.error == "Device nvme is not migratable, but --only-migratable was specified"
    assert outcome.source is None and outcome.destination is None
    assert not (tmp_path / "work" / "destination.log").exists()


def test_capability_conflict_is_refused(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    outcome = run_toml(
        tmp_path,
        qemu_binary,
        "conflict",
        "[migration]\ncapabilities = { postcopy-ram = true, x-ignore-shared = true }\n",
    )
    assert (outcome.verdict, outcome.stage) == ("refused", "set-capabilities")
    assert outcome.error == "Postcopy is not compatible with ignore-shared"
    assert outcome.source == VmState("none", "running")
    assert outcome.destination == VmState("none", "inmigrate")


def test_unmigratable_device_refuses_migrate(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    outcome = run_toml(tmp_path, qemu_binary, "nvme", '[vm]\nargs = ["-device", "nvme,serial=n0"]\n[migration]\n')
    assert (outcome.verdict, outcome.stage) == ("refused", "migrate")
    assert outcome.error == "State blocked by non-migratable device '0000:00:01.0/nvme'"
    assert outcome.source == VmState("none", "running")
    # The destination already ran migrate-incoming (tcp) before the source's migrate was refused. Measured:
    # 7.2's query-migrate on a destination shows no status for an incoming migration in setup.
    expected_destination_status = "setup" if qemu_binary.version >= Version(8, 0) else "none"
    assert outcome.destination == VmState(expected_destination_status, "inmigrate")


def test_destination_that_dies_makes_the_verdict_failed(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    """A destination with less RAM cannot load the stream and exits(1). Through a file the source has
    completed before the destination reads anything, so the only error is the destination's death: the
    dead side is null and the error says why it died. (Over a socket the source would fail too, with a
    socket error whose errno depends on timing: EPIPE or ECONNRESET.)"""
    transport = "file" if qemu_binary.version >= Version(8, 2) else "exec"  # 7.2 has no file: URI
    outcome = run_toml(
        tmp_path,
        qemu_binary,
        "mismatch",
        f'[destination]\nmemory = "128M"\n[migration]\ntransport = "{transport}"\n',
    )
    assert (outcome.verdict, outcome.stage) == ("failed", "migration")
    assert outcome.source == VmState("completed", "postmigrate")
    assert outcome.destination is None
    # From 10.2 the line names the cause (qemu_loadvm_state's Error**: reference_impl/loadvm.py, load_failure).
    cause = ": " + RAM_LOAD_ERROR if qemu_binary.version >= Version(10, 2) else ""
    assert outcome.error == f"destination QEMU exited with status 1: load of migration failed: Invalid argument{cause}"


def test_vfio_device_without_provider_is_skipped(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    outcome = run_toml(
        tmp_path,
        qemu_binary,
        "vfio",
        '[[vm.device]]\ndriver = "vfio-pci"\nid = "vfio0"\n[migration]\n',
    )
    assert outcome.verdict == "skipped"
    assert outcome.skip_reason == NO_VFIO_PROVIDER


class _AbsentDevice:
    """An allocator handing out a PCI address with no device behind it: QEMU refuses to start, which
    exercises the executor's VFIO plumbing (argv, names, release) without VFIO hardware."""

    name = "absent"

    def __init__(self) -> None:
        self.released: list[AllocatedDevice] = []

    def allocate(self, device: DeviceSpec) -> AllocatedDevice:
        return AllocatedDevice(properties={"host": "0000:7f:1f.7"}, host_name="0000:7f:1f.7")

    def release(self, device: AllocatedDevice) -> None:
        self.released.append(device)


def test_vfio_device_gets_the_allocators_host_side(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    allocator = _AbsentDevice()
    outcome = run_toml(
        tmp_path,
        qemu_binary,
        "vfio-absent",
        '[[vm.device]]\ndriver = "vfio-pci"\nid = "vfio0"\n[migration]\n',
        allocator=allocator,
    )
    assert (outcome.verdict, outcome.stage) == ("refused", "startup")
    assert outcome.error == "vfio /sys/bus/pci/devices/0000:7f:1f.7: no such host device: No such file or directory"
    assert outcome.extra["vfio_names"] == {"vfio0": "0000:7f:1f.7"}
    assert outcome.vfio_provider == "absent"
    # Allocated per launch: the destination was never launched, so only the source's device was taken,
    # and it was given back.
    assert len(allocator.released) == 1
    log = (tmp_path / "work" / "source.log").read_text()
    assert "-device vfio-pci,host=0000:7f:1f.7,id=vfio0: " in log


@pytest.mark.parametrize("accel", ["kvm"])
def test_kvm_accel_is_used_when_asked(tmp_path: Path, qemu_binary: QemuBinary, accel: str) -> None:
    from harness.probe import probe_binary

    if not probe_binary(qemu_binary).kvm.usable:
        outcome = run_toml(tmp_path, qemu_binary, "kvm", f'[vm]\naccel = "{accel}"\n[migration]\n')
        assert outcome.verdict == "skipped" and outcome.skip_reason is not None
        assert outcome.skip_reason.startswith("accel kvm requested but KVM is not usable")
        return
    outcome = run_toml(tmp_path, qemu_binary, "kvm", f'[vm]\naccel = "{accel}"\n[migration]\n')
    assert outcome.accel == "kvm"
    assert outcome.verdict == "completed", outcome.to_json()
    assert outcome.source == VmState("completed", "postmigrate")
    assert outcome.destination == VmState("completed", "running")


# ---- host failures are environment errors; QEMUs that quit does not end ----------------------------------


def test_host_errno_matches_only_the_host_resource_errno_texts() -> None:
    from harness.execution.verdict import host_errno

    assert host_errno("cannot set up guest memory 'pc.ram': Cannot allocate memory") == "ENOMEM"
    assert host_errno("Unable to write to file: No space left on device") == "ENOSPC"
    assert host_errno("destination QEMU exited with status 1: cannot set up guest memory 'pc.ram': "
                      "Cannot allocate memory") == "ENOMEM"  # fmt: skip
    assert host_errno("Could not open '/x': Too many open files") == "EMFILE"
    assert host_errno("Could not open '/x': Too many open files in system") == "ENFILE"
    # QEMU's own judgements stay refusals, even when they mention memory.
    assert host_errno("Device nvme is not migratable, but --only-migratable was specified") is None
    assert host_errno("Cannot allocate memory for the xbzrle cache: cache size too large") is None
    assert host_errno("Failed to connect to '127.0.0.1:1': Connection refused") is None
    assert host_errno(None) is None


def _overcommits() -> bool:
    """vm.overcommit_memory=1 lets any size be mapped: then QEMU starts with 1T and there is nothing to test."""
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1"
    except OSError:
        return False


def test_guest_memory_the_host_cannot_give_is_an_environment_error(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    from harness.errors import HostEnvironmentError
    from harness.execution.verdict import HostResourceExhausted

    if _overcommits():
        pytest.skip("vm.overcommit_memory=1: the host maps 1T of guest memory, so QEMU starts")
    with pytest.raises(HostResourceExhausted) as info:
        run_toml(tmp_path, qemu_binary, "huge", '[vm]\nmemory = "1T"\n[migration]\ntransport = "tcp"\n')
    assert isinstance(info.value, HostEnvironmentError) and info.value.errno_name == "ENOMEM"
    # Measured on 7.2.22 and 10.0.2 (qemu_ram_alloc's error): the same words on both.
    assert info.value.outcome.error == "cannot set up guest memory 'pc.ram': Cannot allocate memory"
    assert (info.value.outcome.verdict, info.value.outcome.stage) == ("refused", "startup")
    assert "Cannot allocate memory" in (tmp_path / "work" / "source.log").read_text()


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 40 KiB tmpfs: a migration stream of a 64M VM (a few hundred KiB of zero-page records) cannot fit.
    At a short path: the VMs' QMP sockets go there too, and a Unix socket path must stay under 108 bytes."""
    mount = Path(tempfile.mkdtemp(prefix="mc-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def test_a_full_disk_under_a_file_transport_is_an_environment_error(
    tmp_path: Path, qemu_binary: QemuBinary, small_tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.execution.verdict import HostResourceExhausted
    from harness.probe import probe_binary, probe_host

    if qemu_binary.version < Version(8, 2):
        pytest.skip(f"QEMU {qemu_binary.version} has no file: migration transport (8.2+)")
    probe_binary(qemu_binary)  # probed (and cached) before the stream's folder moves to the small disk
    probe_host()
    monkeypatch.setattr(tempfile, "tempdir", str(small_tmpfs))  # MigrationPair's private folder: the stream
    with pytest.raises(HostResourceExhausted) as info:
        run_toml(tmp_path, qemu_binary, "full", '[vm]\nmemory = "64M"\n[migration]\ntransport = "file"\n')
    assert info.value.errno_name == "ENOSPC"
    # Measured on 10.0.2: the source's migration fails with QEMU's write error as error-desc.
    assert info.value.outcome.error == "Unable to write to file: No space left on device"
    assert (info.value.outcome.verdict, info.value.outcome.stage) == ("failed", "migration")


def test_a_qemu_that_ignores_quit_is_killed_and_the_outcome_says_so(
    tmp_path: Path, qemu_binary: QemuBinary, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.pair import MigrationPair

    close = MigrationPair.close
    stopped: list[int] = []

    async def stop_the_source_then_close(pair: MigrationPair) -> None:
        # A stopped process answers neither quit nor SIGTERM (both stay pending): only SIGKILL ends it.
        assert pair.source.pid is not None
        os.killpg(pair.source.pid, signal.SIGSTOP)
        stopped.append(pair.source.pid)
        await close(pair)

    monkeypatch.setattr(MigrationPair, "close", stop_the_source_then_close)
    outcome = run_toml(tmp_path, qemu_binary, "stuck", '[migration]\ntransport = "tcp"\n')
    assert outcome.verdict == "completed" and stopped
    assert outcome.extra["shutdown"] == {
        "source": "did not exit within 1.5 s of quit, no exit within 0.5 s of SIGTERM: needed SIGKILL"
    }
    assert not Path(f"/proc/{stopped[0]}").exists() or "zombie" in Path(f"/proc/{stopped[0]}/status").read_text()


def test_the_runner_keeps_the_logs_of_an_item_that_erred_and_only_those(
    tmp_path: Path, qemu_binary: QemuBinary
) -> None:
    from harness.runner import RunOptions, run_sync
    from harness.targets import targets_for_binaries

    if _overcommits():
        pytest.skip("vm.overcommit_memory=1: the host maps 1T of guest memory, so QEMU starts")
    for name, text in (("huge", '[vm]\nmemory = "1T"\n'), ("plain", "")):
        (tmp_path / f"{name}.toml").write_text(text + '[migration]\ntransport = "tcp"\n')
    scenarios = [load_scenario(tmp_path / "huge.toml"), load_scenario(tmp_path / "plain.toml")]
    logs = tmp_path / "results" / "logs"
    options = RunOptions(backend="qemu", jobs=1, timeout=30.0, logs_dir=logs)
    res = run_sync(scenarios, targets_for_binaries([qemu_binary]), options)
    assert [(e.scenario, e.kind) for e in res.errors] == [("huge", "environment")]
    assert res.exit_status == 3
    kept = logs / f"huge__{qemu_binary.version}"
    assert res.errors[0].logs == str(kept.resolve())
    assert "Cannot allocate memory" in (kept / "source.log").read_text()
    assert [p.name for p in logs.iterdir()] == [kept.name]  # the plain item's folder went with it


# ---------------------------------------------------------------------------------------------- races
# A state read right after a step must not depend on which QEMU got the CPU first. These tests make the
# slow side deterministic instead of hoping a loaded host shows it.

SCENARIOS = SUITE_DIR
# How long the proxy holds the source's connection back from the destination: far longer than the executor
# needs to issue the next step and read the states, far shorter than the executor's leave-setup bound.
ACCEPT_DELAY_S = 3.0


class DelayedAcceptProxy:
    """Between the source and the destination's migration socket: accepts the source's connection at once
    (so the source leaves setup and goes active) but connects it to the destination only after
    :data:`ACCEPT_DELAY_S`, as a destination whose main loop has not run yet would. Loopback only."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = [self.listener]
        self.accepted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            source, _ = self.listener.accept()
        except OSError:
            return
        self.sockets.append(source)
        self.accepted.set()
        time.sleep(ACCEPT_DELAY_S)
        try:
            destination = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            return
        self.sockets.append(destination)
        threading.Thread(target=self._pump, args=(destination, source), daemon=True).start()
        self._pump(source, destination)

    @staticmethod
    def _pump(reader: socket.socket, writer: socket.socket) -> None:
        try:
            while data := reader.recv(65536):
                writer.sendall(data)
            writer.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def delayed_accept(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[DelayedAcceptProxy]]:
    """Every tcp migrate-incoming of the executor's pairs gets a :class:`DelayedAcceptProxy` in front."""
    proxies: list[DelayedAcceptProxy] = []
    original = MigrationPair.start_incoming

    async def start_incoming(self: MigrationPair, transport: str) -> str:
        uri = await original(self, transport)
        assert transport == "tcp", "the proxy speaks tcp only"
        proxy = DelayedAcceptProxy(int(uri.rsplit(":", 1)[1]))
        proxies.append(proxy)
        self.incoming_uri = f"tcp:127.0.0.1:{proxy.port}"
        return self.incoming_uri

    monkeypatch.setattr(MigrationPair, "start_incoming", start_incoming)
    yield proxies
    for proxy in proxies:
        proxy.close()


def test_migrate_step_ends_with_both_sides_past_setup(
    tmp_path: Path, qemu_binary: QemuBinary, delayed_accept: list[DelayedAcceptProxy]
) -> None:
    """precheck-running (the main job's false divergence): the second migrate is refused while the first
    runs. The source goes active as soon as its connection exists, the destination only once its main loop
    accepted it (process_incoming_migration_co); here that accept comes seconds later, so a final read that
    does not wait for it sees the destination in setup (10.0) or none (7.2). The settled state is active."""
    scenario = load_scenario(SCENARIOS / "precheck-running.toml")
    outcome = run_scenario(scenario, qemu_binary, workdir=tmp_path / "work", timeout=30.0)
    assert len(delayed_accept) == 1 and delayed_accept[0].accepted.is_set()  # the proxy was in the path
    assert (outcome.verdict, outcome.stage) == ("refused", "migrate"), outcome.to_json()
    assert outcome.error == "There's a migration process in progress"
    assert outcome.source == VmState("active", "running")
    assert outcome.destination == VmState("active", "inmigrate"), outcome.to_json()
    assert "unsettled" not in outcome.extra


def test_repeat_reports_each_real_run(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    """``migconform run --repeat 2`` on real QEMU: the scenario runs twice, the model once, and the JSON's
    stability entry accounts for both runs with one outcome (precheck-running is settled on every run now)."""
    from harness import cli

    json_path = tmp_path / "results.json"
    status = cli.main(
        [
            "run",
            str(SCENARIOS / "precheck-running.toml"),
            "--qemu",
            str(qemu_binary.path),
            "--repeat",
            "2",
            "--jobs",
            "1",
            "--json",
            str(json_path),
            "--quiet",
        ]
    )
    data = json.loads(json_path.read_text())
    (item,) = data["stability"]
    assert (item["scenario"], item["runs"], item["error"]) == ("precheck-running", 2, 0), item
    assert item["agree"] + item["diverge"] + item["known_bug"] == 2
    assert sum(seen["count"] for seen in item["outcomes"]) == 2
    assert len(data["comparisons"]) == 1 and data["meta"]["repeat"] == 2
    assert [o["backend"] for o in data["outcomes"]].count("qemu") == 1
    assert (item["stable"], item["status"], status) == (True, "stable", 0), item
