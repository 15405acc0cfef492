"""The PCI buses a VM's devices sit on: slot allocation and qdev paths (pci_qdev_realize,
do_pci_register_device, pcibus_get_dev_path in hw/pci/pci.c), for q35's pcie.0 and i440fx's pci.0.

The qdev path is what names a device's vmstate section, so it is in every "State blocked by non-migratable
device '<path>/<vmsd>'" and every destination's "Unknown section" message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.scenario import DeviceSpec
from reference_impl import catalog
from reference_impl.limits import NotModelled

__all__ = ["I440FX", "NOT_DYNAMIC_SYSBUS", "Buses", "buses_for", "pci_paths", "take_pci_slot"]

# Devices that create a PCI bus named after their id (pcie-root-port: one slot, the others 32).
_PCI_BRIDGES = frozenset({"pcie-root-port", "ioh3420", "xio3130-downstream", "pci-bridge", "pcie-pci-bridge"})


@dataclass
class _PciBus:
    prefix: str  # qdev path prefix: "0000:00" for pcie.0, the bridge's own path below it
    first_slot: int
    last_slot: int
    slots: dict[int, str] = field(default_factory=dict)  # slot -> "driver,id=ID" of its occupant


@dataclass
class Buses:
    pci: dict[str, _PciBus] = field(default_factory=lambda: {"pcie.0": _PciBus("0000:00", 1, 0x1E)})
    usb_controller: str | None = None  # qdev path of the newest USB host controller
    usb_ports: dict[str, int] = field(default_factory=dict)  # controller path -> ports taken
    root: str = "pcie.0"  # the bus a PCI device without bus= goes to


# What pc (i440fx) has on pci.0 under -nodefaults (pc_init1): the host bridge at 00.0 and the PIIX3
# functions at 01.x, so auto slots start at 02 (measured: nvme at startup and hot-added reads
# '0000:00:02.0/nvme' on 7.2.22, 10.0.2, 10.2.2). Slot 1f is free there (no ICH9 functions).
I440FX = "pc-i440fx-"
# intel-iommu / amd-iommu are sysbus devices only q35 allows (machine_class_allow_dynamic_sysbus_dev in
# pc_q35.c; qdev_device_add_from_qdict refuses them elsewhere). Measured with intel-iommu on pc, the three.
NOT_DYNAMIC_SYSBUS = "Parameter 'driver' expects a dynamic sysbus device type for the machine"


def buses_for(machine_type: str) -> Buses:
    """The empty buses of a machine type: q35's pcie.0 or i440fx's pci.0."""
    if machine_type.startswith(I440FX):
        return Buses(pci={"pci.0": _PciBus("0000:00", 2, 0x1F)}, root="pci.0")
    return Buses()


def _parse_slot(addr: str) -> tuple[int, int]:
    slot_text, _, fn_text = addr.partition(".")
    return int(slot_text, 16), int(fn_text or "0", 16)


def take_pci_slot(buses: Buses, device: DeviceSpec) -> tuple[str | None, str | None]:
    """pci_qdev_realize / do_pci_register_device: (qdev path, error).

    Paths as measured (docs/real-qemu-facts.md#blockers, #slots-and-buses): "0000:00:01.0" on pcie.0 (auto
    slots from 01 in realize order; 00 is the host bridge, 1f the ICH9 functions), "0000:00:01.0:00.0" behind
    a root port at 01.0 (pcibus_get_dev_path appends one "SS.F" per bridge level).
    """
    if buses.root != "pcie.0" and (
        "addr" in device.properties or device.driver in _PCI_BRIDGES or device.driver == "vfio-pci"
    ):
        raise NotModelled(f"-device {device.driver} with {sorted(device.properties)} on pci.0 (i440fx)")
    bus = buses.pci.get(device.properties.get("bus", buses.root))
    if bus is None:
        return None, f"Bus '{device.properties.get('bus')}' not found"
    occupant = f"{device.driver},id={device.id if device.id is not None else '(null)'}"
    addr = device.properties.get("addr")
    if addr is not None:
        slot, fn = _parse_slot(addr)
        reserved = bus.prefix == "0000:00" and slot in (0, 0x1F)
        if slot in bus.slots or reserved:
            owner = bus.slots.get(slot, "mch,id=(null)")
            return None, f"PCI: slot {slot} function {fn} not available for {device.driver}, in use by {owner}"
    else:
        free = [s for s in range(bus.first_slot, bus.last_slot + 1) if s not in bus.slots]
        if not free:
            return None, f"PCI: no slot/function available for {device.driver}, all in use or reserved"
        slot, fn = free[0], 0
    bus.slots[slot] = occupant
    path = f"{bus.prefix}:{slot:02x}.{fn}"
    if device.driver in _PCI_BRIDGES and device.id is not None:
        last = 0 if device.driver in ("pcie-root-port", "ioh3420", "xio3130-downstream") else 0x1F
        buses.pci[device.id] = _PciBus(path, 0, last)
    return path, None


def pci_paths(devices: tuple[DeviceSpec, ...], machine: str = "") -> list[str | None]:
    """Each device's qdev path on the PCI buses (None off PCI), as take_pci_slot assigns them in realize order."""
    buses = buses_for(machine)
    return [take_pci_slot(buses, d)[0] if catalog.is_pci_driver(d.driver) else None for d in devices]
