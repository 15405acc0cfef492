"""Scenario files through harness.executor.execute() against every discovered QEMU binary.

The scenarios are TOML as users write them (loaded by harness.loader), and the assertions are the
contract's outcome fields: verdict, stage, QEMU's exact error, and each side's status and runstate.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.binaries import QemuBinary
from harness.executor import NO_VFIO_PROVIDER, run_scenario
from harness.loader import load_scenario
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
