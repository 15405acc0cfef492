"""The lab's VFIO allocator: a fresh mtty/mdpy mdev instance for every device of every QEMU launch.

mtty keeps its migration state across close/open and QEMU never resets it (docs/vfio-lab.md P4), so an
instance is never reused: allocate() creates one of the type that matches the device's personality and
release() removes it. This runs inside the L1 guest (harness.vfio_lab.inside), where the lab's modules
are loaded.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from contract.scenario import DeviceSpec
from harness.errors import ResourceUnavailable
from harness.vfio.allocator import AllocatedDevice, VfioUnavailable

DEFAULT_PERSONALITY = "migratable"


@dataclass(frozen=True)
class Personality:
    """Where instances of one personality come from: an mdev parent and one of its types."""

    parent: str  # /sys/class/mdev_bus/<parent>
    mdev_type: str  # mdev_supported_types/<mdev_type>
    module: str  # the .ko that provides it (images/lab/mtty/Kbuild)


# Class names come from images/lab/mtty/Kbuild; a type name is "<class>-<sysfs_name>". The one-port
# types are used: each module offers 24 ports, and instances are removed after every launch.
PERSONALITIES: dict[str, Personality] = {
    "migratable": Personality("mtty", "mtty-1", "mtty.ko"),
    "no-p2p": Personality("mtty-nop2p", "mtty-nop2p-1", "mtty_nop2p.ko"),
    "no-precopy": Personality("mtty-noprecopy", "mtty-noprecopy-1", "mtty_noprecopy.ko"),
    "no-dirty-logging": Personality("mtty-nolog", "mtty-nolog-1", "mtty_nolog.ko"),
    "no-migration": Personality("mdpy", "mdpy-vga", "mdpy.ko"),
}

MDEV_BUS = Path("/sys/class/mdev_bus")
MDEV_DEVICES = Path("/sys/bus/mdev/devices")


class MdevAllocator:
    """Implements harness.vfio.allocator.VfioDeviceAllocator with mdev instances."""

    name = "mtty"

    def __init__(
        self,
        offered: Iterable[str] | None = None,
        unavailable_note: str = "",
        *,
        mdev_bus: Path = MDEV_BUS,
        mdev_devices: Path = MDEV_DEVICES,
    ) -> None:
        # offered: the personalities this lab kernel really has (the build's recipe); default all.
        self._offered = tuple(PERSONALITIES if offered is None else offered)
        self._note = unavailable_note
        self._bus = mdev_bus
        self._devices = mdev_devices
        self._live: set[str] = set()

    def type_dir(self, personality: str) -> Path:
        """The mdev type of ``personality``. A personality this lab build does not offer is
        :class:`VfioUnavailable` (known before anything runs: a skip); one it offers whose type is missing
        from sysfs (its module did not load) is a lab that lost a resource: :class:`ResourceUnavailable`."""
        if personality not in self._offered or personality not in PERSONALITIES:
            why = f": {self._note}" if self._note else ""
            raise VfioUnavailable(
                f"the mtty lab on kernel {os.uname().release} cannot supply personality {personality!r}{why} "
                f"(it offers {', '.join(self._offered)})"
            )
        spec = PERSONALITIES[personality]
        path = self._bus / spec.parent / "mdev_supported_types" / spec.mdev_type
        if not path.is_dir():
            raise ResourceUnavailable(
                f"mdev type {spec.mdev_type}",
                f"personality {personality!r} needs it ({spec.module}), which the lab build offers but this "
                "lab guest does not have",
            )
        return path

    def allocate(self, device: DeviceSpec) -> AllocatedDevice:
        """A fresh instance; an exhausted pool (no instance left, or create refused) is a resource the run
        should have had: :class:`ResourceUnavailable`, never a skip."""
        type_dir = self.type_dir(device.personality or DEFAULT_PERSONALITY)
        available = type_dir / "available_instances"
        if available.exists() and int(available.read_text().strip() or 0) <= 0:
            raise ResourceUnavailable(
                f"mdev type {type_dir.name}", f"no instances left ({len(self._live)} held by this run)"
            )
        name = str(uuid.uuid4())
        try:
            (type_dir / "create").write_text(name)
        except OSError as exc:
            raise ResourceUnavailable(f"mdev type {type_dir.name}", f"creating an instance failed: {exc}") from exc
        self._live.add(name)
        return AllocatedDevice(properties={"sysfsdev": str(self._devices / name)}, host_name=name)

    def release(self, device: AllocatedDevice) -> None:
        """Removes the instance; retries briefly because QEMU may still be closing the device."""
        remove = self._devices / device.host_name / "remove"
        deadline = time.monotonic() + 5.0
        while True:
            try:
                if remove.exists():
                    remove.write_text("1")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._live.discard(device.host_name)

    def release_all(self) -> None:
        """Removes every instance this allocator created and has not released (after a crash)."""
        for name in list(self._live):
            self.release(AllocatedDevice(properties={}, host_name=name))
