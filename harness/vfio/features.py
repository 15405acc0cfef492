"""What a device's kernel driver offers for migration, asked with the VFIO device-feature ioctls QEMU uses
(``VFIO_DEVICE_FEATURE_MIGRATION`` GET, ``DMA_LOGGING_START`` PROBE in ``vfio_migration_init`` and
``vfio_devices_all_device_dirty_tracking``), and whether this kernel can report device dirty pages.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from harness.vfio.sysfs import DEV_VFIO
from reference_impl.vfio.uapi import MigrationFlag

MIGRATION_STOP_COPY = int(MigrationFlag.STOP_COPY)
MIGRATION_P2P = int(MigrationFlag.P2P)
MIGRATION_PRE_COPY = int(MigrationFlag.PRE_COPY)


# --- VFIO uAPI (include/uapi/linux/vfio.h): every VFIO ioctl is _IO(';', 100 + n) ---------------------
_VFIO_TYPE = ord(";")
_VFIO_BASE = 100


def _vfio_io(nr: int) -> int:
    return (_VFIO_TYPE << 8) | (_VFIO_BASE + nr)


VFIO_GET_API_VERSION = _vfio_io(0)
VFIO_CHECK_EXTENSION = _vfio_io(1)
VFIO_SET_IOMMU = _vfio_io(2)
VFIO_GROUP_GET_STATUS = _vfio_io(3)
VFIO_GROUP_SET_CONTAINER = _vfio_io(4)
VFIO_GROUP_GET_DEVICE_FD = _vfio_io(6)
VFIO_DEVICE_FEATURE = _vfio_io(17)
VFIO_API_VERSION = 0
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6


class _GroupStatus(ctypes.Structure):
    _fields_ = (("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32))


class _FeatureMigration(ctypes.Structure):
    """struct vfio_device_feature followed by struct vfio_device_feature_migration."""

    _fields_ = (("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("mig_flags", ctypes.c_uint64))


class _FeatureHeader(ctypes.Structure):
    _fields_ = (("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32))


@dataclass
class MigrationFeatures:
    """What the kernel driver answered; None fields mean the query could not be made (see ``error``)."""

    # VFIO_DEVICE_FEATURE_MIGRATION flags, or None when the driver has no migration support (ENOTTY).
    flags: int | None = None
    dma_logging: bool | None = None
    error: str | None = None

    @property
    def flag_names(self) -> list[str]:
        if self.flags is None:
            return []
        names = [("STOP_COPY", MIGRATION_STOP_COPY), ("P2P", MIGRATION_P2P), ("PRE_COPY", MIGRATION_PRE_COPY)]
        return [name for name, bit in names if self.flags & bit]

    @property
    def personality(self) -> str | None:
        """The scenario contract's personality name that matches these features (None: unknown)."""
        if self.error is not None and self.flags is None:
            return None
        if self.flags is None or not self.flags & MIGRATION_STOP_COPY:
            return "no-migration"
        if not self.flags & MIGRATION_P2P:
            return "no-p2p"
        if not self.flags & MIGRATION_PRE_COPY:
            return "no-precopy"
        if not self.dma_logging:
            return "no-dirty-logging"
        return "migratable"


def query_migration_features(group: str, vbasedev_name: str, dev_vfio: Path = DEV_VFIO) -> MigrationFeatures:
    """Ask the kernel driver, through a fresh container, what it supports for migration.

    Mirrors vfio_migration_query_flags() and vfio_devices_all_device_dirty_tracking()'s PROBE of
    DMA_LOGGING_START. The device fd is closed at once; the device's state is not changed.
    """
    fds: list[int] = []
    try:
        container = os.open(dev_vfio / "vfio", os.O_RDWR)
        fds.append(container)
        if fcntl.ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION:
            return MigrationFeatures(error="unknown VFIO API version")
        group_fd = os.open(dev_vfio / group, os.O_RDWR)
        fds.append(group_fd)
        status = _GroupStatus(ctypes.sizeof(_GroupStatus), 0)
        fcntl.ioctl(group_fd, VFIO_GROUP_GET_STATUS, status)
        if not status.flags & VFIO_GROUP_FLAGS_VIABLE:
            return MigrationFeatures(error=f"IOMMU group {group} is not viable: bind all its devices to VFIO drivers")
        fcntl.ioctl(group_fd, VFIO_GROUP_SET_CONTAINER, ctypes.c_int(container))
        fcntl.ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)
        device_fd = fcntl.ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, ctypes.create_string_buffer(vbasedev_name.encode()))
        fds.append(device_fd)
        return MigrationFeatures(
            flags=_migration_flags(device_fd),
            dma_logging=_probe(device_fd, VFIO_DEVICE_FEATURE_DMA_LOGGING_START),
        )
    except OSError as err:
        return MigrationFeatures(error=f"VFIO query of {vbasedev_name} failed: {err.strerror or err}")
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _migration_flags(device_fd: int) -> int | None:
    feature = _FeatureMigration(
        ctypes.sizeof(_FeatureMigration), VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION
    )
    try:
        fcntl.ioctl(device_fd, VFIO_DEVICE_FEATURE, feature)
    except OSError as err:
        if err.errno == errno.ENOTTY:  # "VFIO migration is not supported in kernel"
            return None
        raise
    return int(feature.mig_flags)


def _probe(device_fd: int, feature_id: int) -> bool:
    header = _FeatureHeader(ctypes.sizeof(_FeatureHeader), VFIO_DEVICE_FEATURE_PROBE | feature_id)
    try:
        fcntl.ioctl(device_fd, VFIO_DEVICE_FEATURE, header)
    except OSError:
        return False
    return True


def kernel_dirty_report_works(kernel: str | None = None, *, boot: Path = Path("/boot")) -> bool | None:
    """Whether the kernel's vfio.ko can report device dirty pages, from the kernel's configuration.

    vfio.ko's DMA-logging report uses iova_bitmap, which is only built with CONFIG_IOMMUFD_DRIVER; without
    it the stubs return -EOPNOTSUPP and precopy fails in ram_save_setup (docs/vfio-lab.md P3). None when
    the configuration cannot be read (then pass dirty-report=works|fails).
    """
    release = kernel or platform.release()
    text: str | None = None
    config = boot / f"config-{release}"
    try:
        text = config.read_text(errors="replace")
    except OSError:
        try:
            import gzip

            with gzip.open("/proc/config.gz", "rt") as fh:
                text = fh.read()
        except OSError:
            return None
    return re.search(r"^CONFIG_IOMMUFD_DRIVER=y$", text, re.M) is not None
