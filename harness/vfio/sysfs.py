"""Where the kernel's device tree lives and how a device's attributes are read from it.

One place, so that unit tests point every reader (inspection, rebinding) at a fake tree with one
:class:`SysfsRoots`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SysfsRoots:
    """Where the kernel's device tree lives; unit tests point these at a fake tree."""

    sys: Path = Path("/sys")
    dev_vfio: Path = Path("/dev/vfio")

    @property
    def pci_devices(self) -> Path:
        return self.sys / "bus/pci/devices"

    @property
    def pci_bus(self) -> Path:
        return self.sys / "bus/pci"

    @property
    def mdev_devices(self) -> Path:
        return self.sys / "bus/mdev/devices"

    @property
    def iommu_groups(self) -> Path:
        return self.sys / "kernel/iommu_groups"


ROOTS = SysfsRoots()
SYS_PCI = ROOTS.pci_devices
SYS_MDEV = ROOTS.mdev_devices
DEV_VFIO = ROOTS.dev_vfio
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Drivers that make a device usable by QEMU's vfio-pci: vfio-pci itself and the variant drivers.
VFIO_DRIVERS = frozenset(
    {
        "vfio-pci",
        "mlx5_vfio_pci",
        "hisi_acc_vfio_pci",
        "pds_vfio_pci",
        "virtio_vfio_pci",
        "nvgrace_gpu_vfio_pci",
        "qat_vfio_pci",
        "vfio_mdev",
    }
)


def read_attr(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None
