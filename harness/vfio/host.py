"""Real VFIO devices of this host: inspection, and an allocator that hands them to scenarios.

Hardware vendors certify a device with the same scenarios the mtty lab runs. Before any QEMU starts we
record what the device is (IDs, driver, IOMMU group and its other members, /dev/vfio access, kernel) and
what its kernel driver offers for migration, read with the same VFIO device-feature ioctls QEMU uses
(``VFIO_DEVICE_FEATURE_MIGRATION`` GET, ``DMA_LOGGING_START`` PROBE in ``vfio_migration_init`` and
``vfio_devices_all_device_dirty_tracking``), so the model is given the device's real personality.

A device is named by a PCI address (``0000:3b:00.1``), an mdev UUID or a sysfs path; the latter two let
the mtty lab play the hardware. Nothing is ever rebound unless the caller asks for it (``allow_rebind``),
and then the original driver is restored afterwards, also after a failure or an interrupt.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from contract.scenario import DeviceSpec
from harness import settings
from harness.vfio.allocator import AllocatedDevice, VfioUnavailable
from reference_impl.vfio.uapi import MigrationFlag

MIGRATION_STOP_COPY = int(MigrationFlag.STOP_COPY)
MIGRATION_P2P = int(MigrationFlag.P2P)
MIGRATION_PRE_COPY = int(MigrationFlag.PRE_COPY)


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


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
        driver = _link_name(roots.pci_devices / member / "driver")
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
    dev.iommu_group = _link_name(sysfs / "iommu_group")
    dev.driver = _link_name(sysfs / "driver")
    if kind == "pci":
        dev.vendor = _read(sysfs / "vendor")
        dev.device = _read(sysfs / "device")
    else:
        dev.vendor = _link_name(sysfs / "mdev_type")
        dev.device = _read(sysfs / "mdev_type" / "name")
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


# --- rebinding (only with --allow-rebind) -----------------------------------------------------------------


class DriverRebinder:
    """Binds PCI devices to vfio-pci for a run and restores their original drivers afterwards.

    Restoring is registered with atexit and with SIGINT/SIGTERM handlers, so an interrupted run puts the
    host back as it found it.
    """

    def __init__(self, roots: SysfsRoots = ROOTS) -> None:
        self._roots = roots
        self._original: dict[str, str | None] = {}
        self._installed = False

    @property
    def rebound(self) -> dict[str, str | None]:
        """{address: original driver} of every device this rebinder moved to vfio-pci."""
        return dict(self._original)

    def bind_to_vfio(self, address: str) -> None:
        path = self._roots.pci_devices / address
        driver = _link_name(path / "driver")
        if driver in VFIO_DRIVERS:
            return
        if not (self._roots.pci_bus / "drivers" / "vfio-pci").is_dir() and shutil.which("modprobe"):
            # vfio-pci must be loaded for drivers_probe to bind it (the kernel does not load it for us).
            subprocess.run(["modprobe", "vfio-pci"], capture_output=True, check=False)
        self._install()
        self._original[address] = driver
        (path / "driver_override").write_text("vfio-pci")
        if driver is not None:
            (path / "driver" / "unbind").write_text(address)
        (self._roots.pci_bus / "drivers_probe").write_text(address)

    def prepare(self, dev: HostVfioDevice) -> list[str]:
        """Binds the device and its group's foreign members to vfio-pci; the addresses it moved."""
        moved: list[str] = []
        if dev.kind != "pci":
            return moved
        for address in [dev.vbasedev_name, *foreign_group_members(dev, self._roots)]:
            before = address in self._original
            self.bind_to_vfio(address)
            if not before and address in self._original:
                moved.append(address)
        return moved

    def restore(self) -> None:
        while self._original:
            address, driver = self._original.popitem()
            path = self._roots.pci_devices / address
            try:
                if _link_name(path / "driver") is not None:
                    (path / "driver" / "unbind").write_text(address)
                (path / "driver_override").write_text("\n")
                if driver is not None:
                    (self._roots.pci_bus / "drivers" / driver / "bind").write_text(address)
            except OSError:
                with contextlib.suppress(OSError):
                    (self._roots.pci_bus / "drivers_probe").write_text(address)

    def _install(self) -> None:
        if self._installed:
            return
        self._installed = True
        atexit.register(self.restore)
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                self.restore()
                if callable(previous):
                    previous(signum, frame)
                else:
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)

            signal.signal(sig, handler)


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
