"""Real VFIO devices of this host: inspection, and an allocator that hands them to scenarios.

Hardware vendors certify a device with the same scenarios the mtty lab runs. Before any QEMU starts we
record what the device is (IDs, driver, IOMMU group and its other members, /dev/vfio access, kernel) and
what its kernel driver offers for migration, read with the same VFIO device-feature ioctls QEMU uses
(``VFIO_DEVICE_FEATURE_MIGRATION`` GET, ``DMA_LOGGING_START`` PROBE in ``vfio_migration_init`` and
``vfio_devices_all_device_dirty_tracking``), so the model is given the device's real personality.

A device is named by a PCI address (``0000:3b:00.1``), an mdev UUID or a sysfs path; the latter two let
the mtty lab play the hardware. Nothing is ever rebound unless the caller asks for it (``allow_rebind``,
harness.vfio.rebind). The driver's answers are harness.vfio.features', the device tree harness.vfio.sysfs'.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.scenario import DeviceSpec
from harness import settings
from harness.vfio.allocator import AllocatedDevice, VfioUnavailable
from harness.vfio.features import MigrationFeatures, query_migration_features
from harness.vfio.sysfs import PCI_ADDRESS, ROOTS, UUID, VFIO_DRIVERS, SysfsRoots, link_name, read_attr


@dataclass
class HostVfioDevice:
    """Everything recorded about one configured device before any QEMU starts."""

    name: str  # as given: PCI address, mdev UUID or sysfs path
    kind: str  # "pci" | "mdev"
    sysfs: str
    vbasedev_name: str  # what QEMU calls it in messages (PCI address or mdev UUID)
    exists: bool
    iommu_group: str | None = None
    group_members: list[str] = field(default_factory=list)
    driver: str | None = None
    vendor: str | None = None
    device: str | None = None
    dev_vfio_access: bool = False
    kernel: str = field(default_factory=platform.release)
    features: MigrationFeatures = field(default_factory=MigrationFeatures)
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems

    def qemu_properties(self) -> dict[str, str]:
        if self.kind == "pci":
            return {"host": self.vbasedev_name}
        return {"sysfsdev": self.sysfs}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"]["flag_names"] = self.features.flag_names
        data["personality"] = self.features.personality
        return data


def locate(name: str, roots: SysfsRoots = ROOTS) -> tuple[str, Path, str]:
    """(kind, sysfs path, vbasedev name) for a PCI address, an mdev UUID or a sysfs path."""
    text = name.strip()
    if text.startswith("/"):
        path = Path(text.rstrip("/"))
        base = path.name.lower()
        if UUID.match(base):
            return "mdev", path, base
        if PCI_ADDRESS.match(base):
            return "pci", path, base
        raise ValueError(f"VFIO device {name!r}: a sysfs path must end in a PCI address (0000:3b:00.1) or an mdev UUID")
    lowered = text.lower()
    if PCI_ADDRESS.match(lowered):
        return "pci", roots.pci_devices / lowered, lowered
    if re.match(r"^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$", lowered):
        return "pci", roots.pci_devices / f"0000:{lowered}", f"0000:{lowered}"
    if UUID.match(lowered):
        return "mdev", roots.mdev_devices / lowered, lowered
    raise ValueError(f"VFIO device {name!r}: expected a PCI address (0000:3b:00.1), an mdev UUID or a sysfs path")


def foreign_group_members(dev: HostVfioDevice, roots: SysfsRoots = ROOTS) -> dict[str, str]:
    """Members of the device's IOMMU group bound to a non-VFIO driver: {address: driver}.

    QEMU can only use a group whose every member is bound to a VFIO driver or to no driver (bridges
    bound to pcieport are allowed by the kernel's viability check).
    """
    found: dict[str, str] = {}
    if dev.kind != "pci":
        return found
    for member in dev.group_members:
        if member == dev.vbasedev_name:
            continue
        driver = link_name(roots.pci_devices / member / "driver")
        if driver is not None and driver not in VFIO_DRIVERS and driver != "pcieport":
            found[member] = driver
    return found


def inspect(
    name: str, *, query_features: bool = True, roots: SysfsRoots = ROOTS, kernel: str | None = None
) -> HostVfioDevice:
    """Record the device's identity, group and driver, and (optionally) its migration features."""
    kind, sysfs, vbase = locate(name, roots)
    dev = HostVfioDevice(name=name, kind=kind, sysfs=str(sysfs), vbasedev_name=vbase, exists=sysfs.exists())
    if kernel is not None:
        dev.kernel = kernel
    if not dev.exists:
        dev.problems.append(f"{sysfs} does not exist")
        return dev
    dev.iommu_group = link_name(sysfs / "iommu_group")
    dev.driver = link_name(sysfs / "driver")
    if kind == "pci":
        dev.vendor = read_attr(sysfs / "vendor")
        dev.device = read_attr(sysfs / "device")
    else:
        dev.vendor = link_name(sysfs / "mdev_type")
        dev.device = read_attr(sysfs / "mdev_type" / "name")
    if dev.iommu_group is None:
        dev.problems.append(f"{vbase} has no IOMMU group (is the IOMMU enabled? intel_iommu=on / amd_iommu=on)")
        return dev
    members_dir = roots.iommu_groups / dev.iommu_group / "devices"
    dev.group_members = sorted(p.name for p in members_dir.iterdir()) if members_dir.is_dir() else [vbase]
    if kind == "pci":
        if dev.driver not in VFIO_DRIVERS:
            dev.problems.append(
                f"{vbase} is bound to {dev.driver or 'no driver'}, not to vfio-pci or a VFIO variant driver "
                f"(bind it yourself: driverctl set-override {vbase} vfio-pci, or echo vfio-pci > "
                f"{sysfs}/driver_override, echo {vbase} > {sysfs}/driver/unbind and echo {vbase} > "
                "/sys/bus/pci/drivers_probe; or pass --allow-rebind to rebind it for the run and restore it "
                "afterwards)"
            )
        for member, driver in foreign_group_members(dev, roots).items():
            dev.problems.append(
                f"IOMMU group {dev.iommu_group} member {member} is bound to {driver}, not to a VFIO driver: "
                "QEMU cannot use the group; bind every member to vfio-pci (or pass --allow-rebind)"
            )
    group_node = roots.dev_vfio / dev.iommu_group
    dev.dev_vfio_access = os.access(group_node, os.R_OK | os.W_OK)
    if not dev.dev_vfio_access:
        dev.problems.append(f"{group_node} is missing or not read/write for this user")
    if query_features and not dev.problems:
        dev.features = query_migration_features(dev.iommu_group, vbase, roots.dev_vfio)
        if dev.features.error is not None and dev.features.flags is None:
            dev.problems.append(dev.features.error)
    return dev


# --- the allocator ------------------------------------------------------------------------------------------


class HostDeviceAllocator:
    """Hands configured host devices to scenario devices by personality, each at most once per launch.

    A scenario device asking for a personality no configured device has is unavailable (the scenario is
    skipped with that reason). Host devices are reused across launches: unlike mtty, a real device is reset
    by QEMU when it is opened.
    """

    name = "host"

    def __init__(self, devices: Sequence[HostVfioDevice]) -> None:
        self._devices = list(devices)
        self._busy: set[str] = set()

    def allocate(self, device: DeviceSpec) -> AllocatedDevice:
        wanted = device.personality or "migratable"
        offered = []
        for dev in self._devices:
            personality = dev.features.personality
            offered.append(f"{dev.vbasedev_name}={personality}")
            if personality == wanted and dev.vbasedev_name not in self._busy and dev.usable:
                self._busy.add(dev.vbasedev_name)
                return AllocatedDevice(properties=dev.qemu_properties(), host_name=dev.vbasedev_name)
        raise VfioUnavailable(
            f"no free configured VFIO device with personality {wanted!r} (configured: {', '.join(offered) or 'none'})"
        )

    def release(self, device: AllocatedDevice) -> None:
        self._busy.discard(device.host_name)


def configured_devices(cli: Iterable[str] = ()) -> list[str]:
    """Devices from --vfio-device (repeatable) and MIGCONFORM_VFIO_DEVICES (comma or space separated)."""
    names = list(cli)
    names.extend(settings.vfio_devices())
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return seen
