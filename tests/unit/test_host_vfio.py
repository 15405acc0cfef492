"""The pure logic of real-device VFIO support on a fake sysfs tree: naming, inspection, refusal of
foreign IOMMU-group members, rebinding and its undo, personality from the driver's flags, the allocator,
and certification's scenario set and verdict."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from contract.outcome import Outcome
from contract.scenario import DeviceSpec, Scenario, VmSpec
from harness.certify import certification_set, decide, is_certifiable, retarget
from harness.compare import Comparison
from harness.results import Results
from harness.vfio.allocator import VfioUnavailable
from harness.vfio.features import MigrationFeatures, kernel_dirty_report_works
from harness.vfio.host import (
    HostDeviceAllocator,
    HostVfioDevice,
    configured_devices,
    foreign_group_members,
    inspect,
    locate,
)
from harness.vfio.host_provider import HostDeviceRefused, HostProvider, devices_needed, shortage
from harness.vfio.rebind import DriverRebinder
from harness.vfio.sysfs import SysfsRoots

DEVICE = "0000:3b:00.1"
SIBLING = "0000:3b:00.0"
GROUP = "42"


def _fake_host(tmp_path: Path, drivers: dict[str, str | None]) -> SysfsRoots:
    """A /sys and /dev/vfio with the given PCI devices (address -> driver) in IOMMU group 42."""
    roots = SysfsRoots(sys=tmp_path / "sys", dev_vfio=tmp_path / "dev" / "vfio")
    group = roots.iommu_groups / GROUP / "devices"
    group.mkdir(parents=True)
    roots.dev_vfio.mkdir(parents=True)
    (roots.dev_vfio / GROUP).write_text("")
    roots.pci_devices.mkdir(parents=True)
    (roots.pci_bus / "drivers" / "vfio-pci").mkdir(parents=True)  # loaded: the rebinder never runs modprobe
    (roots.pci_bus / "drivers_probe").write_text("")
    for address, driver in drivers.items():
        dev = roots.pci_devices / address
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x15b3\n")
        (dev / "device").write_text("0x101e\n")
        (dev / "driver_override").write_text("(null)\n")
        (dev / "iommu_group").symlink_to(roots.iommu_groups / GROUP)
        (group / address).symlink_to(dev)
        if driver is not None:
            drv = roots.pci_bus / "drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            for name in ("bind", "unbind"):
                (drv / name).write_text("")
            (dev / "driver").symlink_to(drv)
    return roots


def _device(name: str, personality_flags: int | None, *, problems: list[str] | None = None) -> HostVfioDevice:
    return HostVfioDevice(
        name=name,
        kind="pci",
        sysfs=f"/sys/bus/pci/devices/{name}",
        vbasedev_name=name,
        exists=True,
        features=MigrationFeatures(flags=personality_flags, dma_logging=True),
        problems=problems or [],
    )


# --- personality from the driver's flags ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "dma_logging", "personality"),
    [
        (0b111, True, "migratable"),
        (0b111, False, "no-dirty-logging"),
        (0b011, True, "no-precopy"),
        (0b101, True, "no-p2p"),
        (0b000, True, "no-migration"),
        (None, None, "no-migration"),
    ],
)
def test_personality_from_flags(flags: int | None, dma_logging: bool | None, personality: str) -> None:
    assert MigrationFeatures(flags=flags, dma_logging=dma_logging).personality == personality


def test_failed_query_has_no_personality() -> None:
    features = MigrationFeatures(error="VFIO query of x failed: Permission denied")
    assert features.personality is None
    assert features.flag_names == []


def test_flag_names() -> None:
    assert MigrationFeatures(flags=0b101).flag_names == ["STOP_COPY", "PRE_COPY"]


# --- locate() ---------------------------------------------------------------------------------------------


def test_locate_forms(tmp_path: Path) -> None:
    roots = SysfsRoots(sys=tmp_path)
    assert locate("0000:3B:00.1", roots) == ("pci", tmp_path / "bus/pci/devices" / DEVICE, DEVICE)
    assert locate("3b:00.1", roots) == ("pci", tmp_path / "bus/pci/devices" / DEVICE, DEVICE)
    uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
    assert locate(uuid, roots) == ("mdev", tmp_path / "bus/mdev/devices" / uuid, uuid)
    assert locate(f"/sys/bus/mdev/devices/{uuid}/") == ("mdev", Path(f"/sys/bus/mdev/devices/{uuid}"), uuid)
    assert locate(f"/sys/bus/pci/devices/{DEVICE}")[0::2] == ("pci", DEVICE)


@pytest.mark.parametrize("name", ["eth0", "3b:00.9", "0000:3b:00", "/sys/class/net/eth0", "83b8f4f2-509f"])
def test_locate_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="VFIO device"):
        locate(name)


def test_configured_devices_merges_cli_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGCONFORM_VFIO_DEVICES", f"{DEVICE}, {SIBLING}  0000:3b:00.2")
    assert configured_devices([SIBLING]) == [SIBLING, DEVICE, "0000:3b:00.2"]


# --- inspection and refusal -------------------------------------------------------------------------------


def test_inspect_bound_device(tmp_path: Path) -> None:
    roots = _fake_host(tmp_path, {DEVICE: "vfio-pci", SIBLING: None})
    dev = inspect(DEVICE, roots=roots, query_features=False)
    assert dev.exists and dev.usable, dev.problems
    assert (dev.iommu_group, dev.driver, dev.vendor, dev.device) == (GROUP, "vfio-pci", "0x15b3", "0x101e")
    assert dev.group_members == [SIBLING, DEVICE]
    assert dev.dev_vfio_access == os.access(roots.dev_vfio / GROUP, os.R_OK | os.W_OK)
    assert dev.qemu_properties() == {"host": DEVICE}


def test_foreign_group_member_is_refused(tmp_path: Path) -> None:
    roots = _fake_host(tmp_path, {DEVICE: "vfio-pci", SIBLING: "mlx5_core"})
    dev = inspect(DEVICE, roots=roots, query_features=False)
    assert foreign_group_members(dev, roots) == {SIBLING: "mlx5_core"}
    assert not dev.usable
    assert any(SIBLING in p and "mlx5_core" in p and "--allow-rebind" in p for p in dev.problems), dev.problems


def test_unbound_device_and_missing_device(tmp_path: Path) -> None:
    roots = _fake_host(tmp_path, {DEVICE: "mlx5_core"})
    dev = inspect(DEVICE, roots=roots, query_features=False)
    assert any("bound to mlx5_core" in p for p in dev.problems)
    gone = inspect("0000:99:00.0", roots=roots)
    assert not gone.exists and "does not exist" in gone.problems[0]


def test_provider_refuses_without_rebinding(tmp_path: Path) -> None:
    roots = _fake_host(tmp_path, {DEVICE: "vfio-pci", SIBLING: "mlx5_core"})
    provider = HostProvider([DEVICE], roots=roots)
    with pytest.raises(HostDeviceRefused, match=r"nothing was started.*0000:3b:00\.0 is bound to mlx5_core"):
        provider.prepare()
    # never unbound behind the user's back
    assert (roots.pci_devices / SIBLING / "driver_override").read_text() == "(null)\n"
    assert (roots.pci_bus / "drivers" / "mlx5_core" / "unbind").read_text() == ""


def test_provider_needs_a_device() -> None:
    with pytest.raises(HostDeviceRefused, match="MIGCONFORM_VFIO_DEVICES"):
        HostProvider([])


def test_rebinder_binds_foreign_members_and_restores(tmp_path: Path) -> None:
    roots = _fake_host(tmp_path, {DEVICE: "vfio-pci", SIBLING: "mlx5_core"})
    dev = inspect(DEVICE, roots=roots, query_features=False)
    rebinder = DriverRebinder(roots)
    assert rebinder.prepare(dev) == [SIBLING]  # the device itself is already on vfio-pci
    assert (roots.pci_devices / SIBLING / "driver_override").read_text() == "vfio-pci"
    assert (roots.pci_bus / "drivers" / "mlx5_core" / "unbind").read_text() == SIBLING
    assert (roots.pci_bus / "drivers_probe").read_text() == SIBLING
    assert rebinder.rebound == {SIBLING: "mlx5_core"}
    rebinder.restore()
    assert (roots.pci_devices / SIBLING / "driver_override").read_text() == "\n"
    assert (roots.pci_bus / "drivers" / "mlx5_core" / "bind").read_text() == SIBLING
    assert rebinder.rebound == {}


def test_dirty_report_from_kernel_config(tmp_path: Path) -> None:
    (tmp_path / "config-6.12.0-a").write_text("CONFIG_VFIO=m\n# CONFIG_IOMMUFD_DRIVER is not set\n")
    (tmp_path / "config-6.12.0-b").write_text("CONFIG_VFIO=m\nCONFIG_IOMMUFD_DRIVER=y\n")
    assert kernel_dirty_report_works("6.12.0-a", boot=tmp_path) is False
    assert kernel_dirty_report_works("6.12.0-b", boot=tmp_path) is True


# --- the allocator ----------------------------------------------------------------------------------------


def test_allocator_matches_personality_once_per_launch() -> None:
    a, b = _device("0000:3b:00.1", 0b111), _device("0000:3b:00.2", 0b111)
    nop2p = _device("0000:3b:00.3", 0b101)
    allocator = HostDeviceAllocator([a, b, nop2p])
    first = allocator.allocate(DeviceSpec("vfio-pci", id="vfio0", personality="migratable"))
    second = allocator.allocate(DeviceSpec("vfio-pci", id="vfio0"))  # default: migratable
    assert {first.host_name, second.host_name} == {a.name, b.name}
    assert first.properties == {"host": first.host_name}
    with pytest.raises(VfioUnavailable, match=r"'migratable'.*0000:3b:00\.3=no-p2p"):
        allocator.allocate(DeviceSpec("vfio-pci", personality="migratable"))
    assert allocator.allocate(DeviceSpec("vfio-pci", personality="no-p2p")).host_name == nop2p.name
    allocator.release(first)
    assert allocator.allocate(DeviceSpec("vfio-pci")).host_name == first.host_name


def test_allocator_skips_unusable_devices() -> None:
    broken = _device("0000:3b:00.1", 0b111, problems=["/dev/vfio/42 is missing"])
    with pytest.raises(VfioUnavailable):
        HostDeviceAllocator([broken]).allocate(DeviceSpec("vfio-pci"))


def _scenario(*personalities: str) -> Scenario:
    devices = tuple(DeviceSpec("vfio-pci", id=f"vfio{i}", personality=p) for i, p in enumerate(personalities))
    vm = VmSpec(devices=devices)
    return Scenario(id="s", requires=("vfio",), source=vm, destination=vm)


def test_shortage_counts_both_sides() -> None:
    scenario = _scenario("migratable")
    assert devices_needed(scenario) == {"migratable": 2}
    one = [_device("0000:3b:00.1", 0b111)]
    reason = shortage(scenario, one)
    assert reason is not None and "2 x 'migratable' (configured: 1)" in reason
    assert shortage(scenario, [*one, _device("0000:3b:00.2", 0b111)]) is None


# --- certification ----------------------------------------------------------------------------------------


def test_retarget_changes_only_vfio_personalities() -> None:
    scenario = _scenario("migratable", "migratable")
    moved = retarget(scenario, "no-precopy")
    assert [d.personality for d in moved.source.vfio_devices] == ["no-precopy", "no-precopy"]
    assert [d.personality for d in moved.destination.vfio_devices] == ["no-precopy", "no-precopy"]
    assert moved.id == scenario.id and "certify:no-precopy" in moved.tags
    assert is_certifiable(scenario) and not is_certifiable(_scenario("migratable", "no-p2p"))


def test_certification_set_from_the_suite() -> None:
    chosen, left_out = certification_set("no-p2p")
    ids = {s.id for s in chosen}
    assert "vfio-precopy-migratable" in ids and "vfio-two-p2p" in ids
    assert all(d.personality == "no-p2p" for s in chosen for d in s.source.vfio_devices)
    assert any(x.startswith("vfio-one-no-p2p:") for x in left_out)
    with pytest.raises(ValueError, match="no VFIO scenario nope"):
        certification_set("migratable", only=["nope"])


def _qemu(verdict: str, names: dict[str, str] | None = None) -> Outcome:
    outcome = Outcome(scenario="s", backend="qemu", qemu_version="10.0.2", verdict=verdict)
    if names:
        outcome.extra["vfio_names"] = names
    return outcome


def test_verdict_needs_agreement_and_a_migration() -> None:
    device = _device(DEVICE, 0b111)
    agree = Comparison(scenario="s", qemu_version="10.0.2", agree=True)
    good = Results(outcomes=[_qemu("completed", {"vfio0": DEVICE})], comparisons=[agree])
    assert decide(good, [device]) == (True, [])
    refused_only = Results(outcomes=[_qemu("refused", {"vfio0": DEVICE})], comparisons=[agree])
    passed, reasons = decide(refused_only, [device])
    assert not passed and reasons == ["the device completed no migration in any scenario"]
    diverged = Comparison(scenario="s", qemu_version="10.0.2", agree=False, differences={"stage": ["a", "b"]})
    passed, reasons = decide(Results(outcomes=good.outcomes, comparisons=[diverged]), [device])
    assert not passed and "disagree on stage" in reasons[0]
    passed, reasons = decide(good, [_device(DEVICE, None)])
    assert not passed and "offers no VFIO migration" in reasons[0]


# --- the provider's batch, with a fake executor ----------------------------------------------------------


def test_run_batch_records_devices_and_skips_shortages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import harness.executor
    from contract.versions import Version
    from harness.binaries import QemuBinary
    from harness.vfio.allocator import VfioDeviceAllocator

    roots = _fake_host(tmp_path, {DEVICE: "vfio-pci", SIBLING: "vfio-pci"})
    calls: list[str] = []

    async def fake_execute(
        scenario: Scenario, binary: QemuBinary, *, workdir: Path, allocator: VfioDeviceAllocator, timeout: float
    ) -> Outcome:
        calls.append(scenario.id)
        source = allocator.allocate(scenario.source.vfio_devices[0])
        destination = allocator.allocate(scenario.destination.vfio_devices[0])
        allocator.release(source)
        allocator.release(destination)
        outcome = Outcome(scenario=scenario.id, backend="qemu", qemu_version="10.0.2", verdict="completed")
        outcome.extra["vfio_names"] = {"vfio0": source.host_name}
        outcome.extra["vfio_names_destination"] = {"vfio0": destination.host_name}
        return outcome

    monkeypatch.setattr(harness.executor, "execute", fake_execute)

    def fake_inspect(name: str, **kwargs: object) -> HostVfioDevice:
        # No ioctls on a fake tree: the flags a migratable driver reports.
        dev = inspect(name, query_features=False, **kwargs)  # type: ignore[arg-type]
        dev.features = MigrationFeatures(flags=0b111, dma_logging=True)
        return dev

    provider = HostProvider([DEVICE, SIBLING], roots=roots, kernel="6.12.0-test", inspector=fake_inspect)
    one = replace(_scenario("migratable"), id="one")
    two = replace(_scenario("migratable", "migratable"), id="two")
    binary = QemuBinary(path="/usr/bin/qemu-system-x86_64", version=Version.parse("10.0.2"), version_text="10.0.2")
    outcomes = {o.scenario: o for o in asyncio.run(provider.run_batch([one, two], [binary]))}
    assert calls == ["one"]
    assert outcomes["one"].vfio_provider == "host" and outcomes["one"].kernel == "6.12.0-test"
    assert set(outcomes["one"].extra["host_devices"]) == {DEVICE, SIBLING}
    assert outcomes["one"].extra["host_devices"][DEVICE]["personality"] == "migratable"
    assert outcomes["two"].verdict == "skipped"
    assert "4 x 'migratable' (configured: 2)" in str(outcomes["two"].skip_reason)
