"""Emulated devices and block formats that stop migration, per QEMU version (migrate_add_blocker callers and
`.unmigratable` vmsds; docs/real-qemu-facts.md blockers).

Two mechanisms: a device whose class vmsd is ``.unmigratable = 1`` (``migrate`` then says "State blocked by
non-migratable device '<qdev path>/<vmsd name>'", and ``-only-migratable`` refuses the device at realize,
``check_only_migratable`` in hw/core/qdev.c), and an explicit ``migrate_add_blocker`` at realize/open time.
Every entry was triggered on 10.0.2 and, where the device exists, 7.2.22 (docs/real-qemu-facts.md#blockers).
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.versions import V8_2, V10_1, Version


@dataclass(frozen=True)
class DeviceModel:
    """What the model knows about one ``-device`` driver."""

    driver: str
    bus: str  # "pci" (takes a slot on pcie.0 unless bus= says otherwise) | "usb" | "sysbus"
    unmigratable_vmsd: str | None = None  # vmsd name of an unmigratable device
    # QOM type that check_only_migratable names (virtio-*-pci: the inner virtio device).
    qom_type: str | None = None
    # The vmsd is registered without a qdev path (amd-iommu: idstr is just "amd-iommu", measured).
    idstr_without_path: bool = False
    # A sysbus device that still occupies a PCI slot on the root bus (amd-iommu's AMDVI-PCI, measured).
    occupies_pci_slot: bool = False
    usb_host_controller: bool = False
    viommu: bool = False
    since: Version | None = None  # first version that has the device ("'X' is not a valid device model name")

    def only_migratable_type(self) -> str:
        return self.qom_type or self.driver


_MODELS = (
    DeviceModel("nvme", "pci", "nvme"),
    # hw/ufs appeared in 8.2 (commit bc4e68d362 "hw/ufs: Initial commit for emulated Universal-Flash-Storage",
    # September 2023: not in 8.1.0's tree, in 8.2.0's; 7.2.22: "'ufs' is not a valid device model name", measured).
    DeviceModel("ufs", "pci", "ufs", since=V8_2),
    DeviceModel("rocker", "pci", "rocker"),
    DeviceModel("amd-iommu", "sysbus", "amd-iommu", idstr_without_path=True, occupies_pci_slot=True, viommu=True),
    DeviceModel("virtio-crypto-pci", "pci", "virtio-crypto", qom_type="virtio-crypto-device"),
    # A reading of the source suggests vmsd "virtio-sound"; real 10.0.2 reports "virtio-sound-device" (measured). Added
    # in 8.2.
    DeviceModel("virtio-sound-pci", "pci", "virtio-sound-device", qom_type="virtio-sound-device", since=V8_2),
    DeviceModel("usb-wacom-tablet", "usb", "usb-wacom"),
    DeviceModel("usb-serial", "usb", "usb-serial"),
    DeviceModel("usb-braille", "usb", "usb-serial"),
    DeviceModel("usb-net", "usb", "usb-net"),
    DeviceModel("usb-mtp", "usb", "usb-mtp"),
    DeviceModel("usb-uas", "usb", "usb-uas"),
    DeviceModel("usb-audio", "usb", "usb-audio"),
    DeviceModel("intel-iommu", "sysbus", viommu=True),
    DeviceModel("virtio-iommu-pci", "pci", viommu=True),
    DeviceModel("qemu-xhci", "pci", usb_host_controller=True),
    DeviceModel("nec-usb-xhci", "pci", usb_host_controller=True),
    DeviceModel("usb-ehci", "pci", usb_host_controller=True),
    DeviceModel("ich9-usb-ehci1", "pci", usb_host_controller=True),
    DeviceModel("piix3-usb-uhci", "pci", usb_host_controller=True),
    DeviceModel("ich9-usb-uhci1", "pci", usb_host_controller=True),
)
CATALOG: dict[str, DeviceModel] = {m.driver: m for m in _MODELS}

# Drivers on the PCI root bus besides the "*-pci" naming convention.
_PCI_DRIVERS = frozenset(
    {
        "e1000", "e1000e", "igb", "rtl8139", "ne2k_pci", "pcnet", "vmxnet3", "pvscsi", "megasas", "megasas-gen2",
        "mptsas1068", "lsi53c895a", "lsi53c810", "am53c974", "dc390", "ich9-ahci", "ahci", "intel-hda",
        "ich9-intel-hda", "VGA", "bochs-display", "cirrus-vga", "qxl", "qxl-vga", "secondary-vga", "pci-bridge",
        "pcie-pci-bridge", "pcie-root-port", "ioh3420", "x3130-upstream", "i82801b11-bridge", "pxb", "pxb-pcie",
        "edu", "pci-testdev", "pvpanic-pci", "sdhci-pci", "i6300esb", "pci-serial", "pci-serial-2x",
        "pci-serial-4x", "ivshmem-plain", "ivshmem-doorbell", "vfio-pci",
    }
)  # fmt: skip

# ivshmem_common_realize (hw/misc/ivshmem-pci.c): peer mode (master=off, the default) adds this blocker.
IVSHMEM_DRIVERS = frozenset({"ivshmem-plain", "ivshmem-doorbell"})
# Drivers whose "memdev" is a link<memory-backend> (ivshmem-plain: DEFINE_PROP_LINK in hw/misc/ivshmem-pci.c).
MEMDEV_DRIVERS = frozenset({"ivshmem-plain"})
IVSHMEM_PEER_BLOCKER = "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"

# Block drivers whose open adds "The <name> format used by node '<node>' does not support live migration"
# (block/vmdk.c, vdi.c, vhdx.c, vpc.c, qcow.c, parallels.c: error_setg(..., "The %s format used by node
# '%s' ...", "vmdk", ...)). Note the capital P for Parallels (measured).
FORMAT_BLOCKERS: dict[str, str] = {
    "vmdk": "vmdk",
    "vdi": "vdi",
    "vhdx": "vhdx",
    "vpc": "vpc",
    "qcow": "qcow",
    "parallels": "Parallels",
}
# Image probing by file name, for -drive without format= (measured: a probed vmdk is still blocked).
_EXTENSION_FORMATS = {".vmdk": "vmdk", ".vdi": "vdi", ".vhdx": "vhdx", ".vhd": "vpc", ".vpc": "vpc"}

# Auto-generated node names ("#block123") change from run to run; the model writes this placeholder and the
# comparison must normalise r"#block\d+" to it.
AUTO_NODE_NAME = "#block<N>"


# Chardev backends whose open adds a migration blocker: backend -> (reason, first version without it).
# ui/vdagent.c vdagent_chr_open: migrate_add_blocker(&vd->migration_blocker, ...). Measured on 10.0.2 and
# 7.2.22 (measured: 7.2.22 has it too, docs/real-qemu-facts.md qmp-steps); 10.1 made vdagent migratable: its
# vdagent_chr_init registers the "vdagent" vmstate section instead (reference_impl.loadvm).
# Chardev backends whose instance registers a vmstate section (10.1+ qemu-vdagent: vdagent_chr_init).
CHARDEV_SECTIONS = frozenset({"qemu-vdagent"})
CHARDEV_BLOCKERS: dict[str, tuple[str, Version]] = {
    "qemu-vdagent": ("The vdagent chardev doesn't yet support migration", V10_1),
}


# The vmstate section a PCI device's state travels in is "<qdev path>/<vmsd name>"; the names measured in the
# destination's "Unknown section or instance" (10.2.2, precopy-device-mismatch). A virtio-*-pci proxy's
# state is its inner virtio device's vmsd (VMSTATE_VIRTIO_DEVICE), registered under the proxy's path.
SECTION_NAMES: dict[str, str] = {"virtio-rng-pci": "virtio-rng"}


def chardev_blocker(backend: str, version: Version) -> str | None:
    """The blocker opening chardev ``backend`` adds on ``version``, if any."""
    entry = CHARDEV_BLOCKERS.get(backend)
    if entry is None or version >= entry[1]:
        return None
    return entry[0]


def format_blocker(fmt_label: str, node: str) -> str:
    return f"The {fmt_label} format used by node '{node}' does not support live migration"


def model_for(driver: str) -> DeviceModel | None:
    return CATALOG.get(driver)


def is_pci_driver(driver: str) -> bool:
    """Whether ``-device DRIVER`` sits on the PCI root bus (and so takes a slot) when no bus= is given."""
    model = CATALOG.get(driver)
    if model is not None:
        return model.bus == "pci" or model.occupies_pci_slot
    return driver in _PCI_DRIVERS or driver.endswith("-pci") or "-pci-" in driver


def is_usb_device(driver: str) -> bool:
    model = CATALOG.get(driver)
    if model is not None:
        return model.bus == "usb"
    return driver.startswith("usb-") and driver not in ("usb-ehci",)


def drive_format(options: dict[str, str]) -> str | None:
    """The format driver a ``-drive`` opens: format= (or driver=, the option format= sets: drive_new passes
    the rest of -drive's options to bdrv_open), else vvfat for fat: files, else probed by extension."""
    fmt = options.get("format") or options.get("driver")
    if fmt:
        return fmt
    file = options.get("file", "")
    if file.startswith("fat:"):
        return "vvfat"
    for ext, name in _EXTENSION_FORMATS.items():
        if file.endswith(ext):
            return name
    return None


def drive_blockers(options: dict[str, str], *, blockdev: bool = False) -> list[str]:
    """Blocker texts that opening one ``-drive``/``-blockdev`` adds, in the order QEMU adds them."""
    fmt = options.get("driver") if blockdev else drive_format(options)
    if fmt is None:
        return []
    node = options.get("node-name") or AUTO_NODE_NAME
    if fmt in FORMAT_BLOCKERS:
        return [format_blocker(FORMAT_BLOCKERS[fmt], node)]
    if fmt == "vvfat":
        rw = options.get("rw") in ("on", "true") or (not blockdev and "rw:" in options.get("file", ""))
        if rw:
            # vvfat rw opens an internal qcow write target first: its blocker is added first (so it is what
            # -only-migratable reports), then the vvfat one (newest, so what migrate reports). Measured.
            return [format_blocker("qcow", AUTO_NODE_NAME), format_blocker("vvfat (rw)", node)]
    return []
