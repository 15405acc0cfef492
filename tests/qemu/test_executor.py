"""Scenario files through harness.executor.execute() against every discovered QEMU binary.

The scenarios are TOML as users write them (loaded by harness.loader), and the assertions are the
contract's outcome fields: verdict, stage, QEMU's exact error, and each side's status and runstate.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.binaries import QemuBinary
from harness.executor import NO_VFIO_PROVIDER, run_scenario
from harness.loader import load_scenario
from harness.pair import MigrationPair
from harness.vfio.allocator import AllocatedDevice
from reference_impl.outcome import Outcome, VmState
from reference_impl.scenario import DeviceSpec
from reference_impl.versions import Version


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
    assert outcome.accel == "tcg"  # auto on this PVM host: see harness.probe.choose_accel
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
    assert outcome.error == "destination QEMU exited with status 1: load of migration failed: Invalid argument"


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


# ---------------------------------------------------------------------------------------------- races
# A state read right after a step must not depend on which QEMU got the CPU first. These tests make the
# slow side deterministic instead of hoping a loaded host shows it.

SCENARIOS = Path(__file__).resolve().parents[1] / "conformance" / "scenarios"
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
