"""The executor's hook for VFIO devices.

A scenario never names a host device. When the executor launches a VM with ``vfio-pci`` devices it asks
an allocator for each device's host side, once per QEMU launch (the mtty lab must give every launch a
fresh mdev because mtty keeps migration state across opens, docs/vfio-lab.md P4), and releases them when
the VM is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from contract.scenario import DeviceSpec
from harness.errors import VfioSetupError


class VfioUnavailable(VfioSetupError):
    """The allocator does not offer this device at all (e.g. no device of that personality): known before
    anything started, the scenario is skipped (kind ``resource``). Raised once the source QEMU has started,
    the executor turns it into :class:`harness.errors.ResourceUnavailable`, an error of the item; an
    allocator that ran out of something it does offer (an exhausted mdev pool) raises that directly."""


@dataclass(frozen=True)
class AllocatedDevice:
    # Extra -device properties placed right after the driver, e.g. {"sysfsdev": "/sys/bus/mdev/devices/U"}
    # or {"host": "0000:3b:00.1"}.
    properties: Mapping[str, str]
    # vbasedev->name as QEMU prints it in messages (the mdev UUID or the host BDF).
    host_name: str


class VfioDeviceAllocator(Protocol):
    name: str

    def allocate(self, device: DeviceSpec) -> AllocatedDevice:
        """Supply the host side for one device of one QEMU launch; raises VfioUnavailable or
        ResourceUnavailable (see :class:`VfioUnavailable`)."""
        ...

    def release(self, device: AllocatedDevice) -> None:
        """Give the host side back (the mtty lab removes the mdev)."""
        ...
