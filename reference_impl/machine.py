"""A modelled VM: its command line realized in QEMU's order, and the migration state it carries.

Startup order (measured, docs/real-qemu-facts.md#only-migratable): every ``-drive``/``-blockdev`` is opened
before any ``-device``; devices are realized in command-line order, and the executor puts the scenario's
``args`` before its ``[[vm.device]]`` entries. Realizing a device may fail (QEMU refuses to start: the error
is returned without the "qemu-system-x86_64: -device ...: " prefix), register an unmigratable vmsd, add a
blocker, or (vfio-pci) register savevm handlers through the VFIO model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from contract.host import HostFacts
from contract.scenario import DeviceSpec, VmSpec
from contract.versions import V10_0, V10_1, Version
from reference_impl import catalog
from reference_impl.blockers import MigrationBlockers
from reference_impl.cpu import INVTSC_ONLY_MIGRATABLE_ERROR, cpu_blocker
from reference_impl.limits import NotModelled
from reference_impl.machine_types import machine_error, machine_type
from reference_impl.pci_buses import I440FX, NOT_DYNAMIC_SYSBUS, Buses, buses_for, take_pci_slot
from reference_impl.savevm import SaveVMHandlers
from reference_impl.vfio.api import VfioMachineState, placeholder_name

# Options that take a value (the next argv item); everything else starting with "-" is a flag.
_VALUE_OPTIONS = frozenset(
    {
        "-device", "-object", "-drive", "-blockdev", "-audiodev", "-chardev", "-netdev", "-M", "-machine", "-m",
        "-accel", "-cpu", "-smp", "-global", "-incoming", "-name", "-uuid", "-bios", "-L", "-kernel", "-initrd",
        "-append", "-serial", "-monitor", "-qmp", "-display", "-vga", "-boot", "-rtc", "-numa", "-fsdev",
        "-virtfs", "-trace", "-d", "-D", "-icount", "-k", "-fw_cfg", "-plugin", "-msg", "-overcommit",
        "-mem-path", "-sandbox", "-run-with", "-action", "-tpmdev", "-spice", "-vnc", "-pidfile", "-parallel",
        "-debugcon", "-mon", "-chroot", "-runas", "-set", "-readconfig", "-option-rom", "-loadvm", "-hda", "-hdb",
        "-hdc", "-hdd", "-cdrom", "-fda", "-fdb", "-pflash", "-nic", "-net", "-add-fd", "-smbios", "-acpitable",
        "-semihosting-config", "-compat", "-audio", "-qmp-pretty", "-device-help",
    }
)  # fmt: skip


def parse_options(text: str) -> tuple[str, dict[str, str]]:
    """Split "driver,key=value,..." (QemuOpts with an implied first key) into (first, options)."""
    parts = text.split(",")
    head = parts[0]
    options: dict[str, str] = {}
    if "=" in head:
        key, _, value = head.partition("=")
        options[key] = value
        head = options.get("driver", "")
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        options[key] = value if sep else "on"
    return head, options


@dataclass(frozen=True)
class CommandLine:
    """What the model reads from one VM's configuration."""

    drives: tuple[tuple[bool, dict[str, str]], ...]  # (is -blockdev, options), in order
    chardevs: tuple[tuple[str, str], ...]  # -chardev (backend, id), in order
    devices: tuple[DeviceSpec, ...]  # args' -device items, then [[vm.device]]
    only_migratable: bool
    start_paused: bool  # -S
    accel: str
    objects: tuple[tuple[str, str], ...] = ()  # -object (id, qom-type), in order
    cpu: str | None = None  # -cpu: [vm] cpu, then the args' last (reference_impl.cpu reads it)
    # every KEY=VALUE value of the arguments that are not an -object's own (what may use an object by id)
    referenced: frozenset[str] = frozenset()


# Parsed command lines per VmSpec object. VmSpec is frozen, so its parse never changes; the entry keeps the
# spec alive so that its id() cannot be reused while cached. Bounded: cleared when full.
_PARSED: dict[int, tuple[VmSpec, CommandLine]] = {}
_PARSED_MAX = 256


def parse_vm(spec: VmSpec) -> CommandLine:
    """The VM's command line as the model reads it (cached per VmSpec object)."""
    hit = _PARSED.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    line = _parse_vm(spec)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[id(spec)] = (spec, line)
    return line


def _parse_vm(spec: VmSpec) -> CommandLine:
    drives: list[tuple[bool, dict[str, str]]] = []
    chardevs: list[tuple[str, str]] = []
    devices: list[DeviceSpec] = []
    objects: list[tuple[str, str]] = []
    only_migratable = spec.only_migratable
    start_paused = False
    accel = spec.accel
    cpu = spec.cpu
    args = spec.args
    i = 0
    while i < len(args):
        opt = args[i]
        norm = "-" + opt.lstrip("-") if opt.startswith("-") else opt
        value = args[i + 1] if norm in _VALUE_OPTIONS and i + 1 < len(args) else None
        i += 2 if value is not None else 1
        if norm == "-S":
            start_paused = True
        elif norm == "-only-migratable":
            only_migratable = True
        elif norm == "-enable-kvm":
            accel = "kvm"
        elif value is None:
            continue
        elif norm == "-accel":
            accel = parse_options(value)[0]
        elif norm == "-cpu":
            cpu = value
        elif norm == "-device":
            driver, options = parse_options(value)
            dev_id = options.pop("id", None)
            options.pop("driver", None)
            devices.append(DeviceSpec(driver=driver, id=dev_id, properties=options))
        elif norm == "-object":
            qom_type, options = parse_options(value)
            objects.append((options.get("id", ""), options.get("qom-type", qom_type)))
        elif norm == "-chardev":
            backend, options = parse_options(value)
            chardevs.append((backend, options.get("id", "")))
        elif norm == "-drive":
            drives.append((False, parse_options("," + value)[1]))
        elif norm == "-blockdev":
            drives.append((True, parse_options("," + value)[1]))
    devices.extend(spec.devices)
    referenced = {str(v) for d in devices for v in d.properties.values()}
    object_values = {a for o, a in itertools.pairwise(args) if o.lstrip("-") == "object"}
    for item in args:
        if item not in object_values:
            referenced.update(part.partition("=")[2] for part in item.split(",") if "=" in part)
    parsed = (tuple(drives), tuple(chardevs), tuple(devices), only_migratable, start_paused, accel, tuple(objects))
    return CommandLine(*parsed, cpu=cpu, referenced=frozenset(referenced))


@dataclass(slots=True)
class Machine:
    """One VM of the scenario: devices realized, plus the migration state QMP reports."""

    version: Version
    host: HostFacts
    role: str  # "source" | "destination"
    vn: int  # the profile as major * 100 + minor (cheap comparisons)
    runstate: str
    blockers: MigrationBlockers
    handlers: list[SaveVMHandlers] = field(default_factory=list)
    kvm_dirty_ring: bool = False
    drives: int = 0  # qcow2 -drive/-blockdev items (snapshot-save needs one that can take snapshots)
    dump_resume: str | None = None  # runstate to restore when a detached dump-guest-memory ends
    status: str = "none"  # query-migrate status
    caps: frozenset[str] = frozenset()
    params: dict[str, Any] = field(default_factory=dict)
    autostart: bool = True  # cleared by -S / `stop` while inmigrate, set by `cont`
    incoming: str | None = None  # transport of migrate-incoming, once called
    incoming_caps: frozenset[str] = frozenset()  # its capabilities when migrate-incoming started the listener
    error_desc: str | None = None
    events: list[str] = field(default_factory=list)  # MIGRATION event statuses sent
    alive: bool = True
    exit_line: str | None = None  # "status N: last stderr line" once dead
    # Source side: the migration started by `migrate` and not yet resolved.
    migration: Any = None
    memory: str = "256M"  # -m: the RAM block size a stream carries (a destination of another size cannot load it)
    devices: tuple[DeviceSpec, ...] = ()  # realized -device items, hot-added ones appended
    chardevs: dict[str, str] = field(default_factory=dict)  # chardev id -> backend
    # the user-creatable objects (-object, object-add): children of /objects, one name each; id -> qom-type
    # (TLS parameters name them: reference_impl.qmp_tls)
    objects: dict[str, str] = field(default_factory=dict)
    referenced: frozenset[str] = frozenset()  # CommandLine.referenced: object-del refuses an object in use
    # vmstate sections registered before RAM's (command-line qemu-vdagent chardevs on 10.1+: loadvm)
    early_sections: int = 0
    # -machine memory-backend=: the guest RAM is a backend object (x-ignore-shared skips it when shared)
    ram_backend: bool = False
    machine_type: str = ""  # the -machine type QEMU resolved (an alias gives the version's newest: machine_types)


def _is_qcow2(options: dict[str, str], *, blockdev: bool) -> bool:
    if blockdev:
        return options.get("driver") == "qcow2"
    return options.get("format") == "qcow2" or ("format" not in options and options.get("file", "").endswith(".qcow2"))


@dataclass(frozen=True)
class _Realized:
    """What realizing a command line's drives and devices left behind (a pure function of its inputs)."""

    error: str | None
    reasons: tuple[str, ...] = ()
    unmigratable: tuple[str, ...] = ()
    handlers: tuple[SaveVMHandlers, ...] = ()


# Realize results per (VmSpec object, profile, HostFacts object, only-migratable): see parse_vm's cache.
_REALIZED: dict[tuple[int, int, int], tuple[VmSpec, HostFacts, _Realized]] = {}


def _realize_cached(spec: VmSpec, line: CommandLine, version: Version, vn: int, host: HostFacts) -> _Realized:
    key = (id(spec), vn, id(host))
    hit = _REALIZED.get(key)
    if hit is not None and hit[0] is spec and hit[1] is host:
        return hit[2]
    result = _realize_uncached(spec, line, version, host)
    if len(_REALIZED) >= _PARSED_MAX:
        _REALIZED.clear()
    _REALIZED[key] = (spec, host, result)
    return result


def _realize_uncached(spec: VmSpec, line: CommandLine, version: Version, host: HostFacts) -> _Realized:
    blockers = MigrationBlockers(only_migratable=line.only_migratable)
    vn = version.major * 100 + version.minor
    vm = Machine(version, host, "source", vn, "prelaunch", blockers, objects=dict(line.objects))
    vm.machine_type = machine_type(spec, version, line.devices)
    vm.chardevs = {chardev_id: backend for backend, chardev_id in line.chardevs}
    # qemu_create_early_backends opens every -chardev before the block backends (qemu_create_late_backends).
    for backend, _chardev_id in line.chardevs:
        reason = catalog.chardev_blocker(backend, version)
        if reason is not None:
            error = blockers.add(reason)
            if error is not None:
                return _Realized(error)
    for is_blockdev, options in line.drives:
        for reason in catalog.drive_blockers(options, blockdev=is_blockdev):
            error = blockers.add(reason)
            if error is not None:
                return _Realized(error)
    # The board's vCPUs (machine_run_board_init) are realized after every backend, before any -device.
    cpu_reason = cpu_blocker(line.cpu, host.kvm and line.accel != "tcg", host.kvm_invtsc, host.kvm_hyperv)
    if cpu_reason is not None and blockers.add(cpu_reason) is not None:
        return _Realized(INVTSC_ONLY_MIGRATABLE_ERROR)
    if line.devices:
        error = _realize_devices(vm, line.devices)
        if error is not None:
            return _Realized(error)
    return _Realized(None, tuple(blockers.reasons), tuple(blockers.unmigratable), tuple(vm.handlers))


def realize(spec: VmSpec, version: Version, host: HostFacts, role: str) -> Machine | str:
    """Start one VM: the Machine, or QEMU's startup error (the message after the option prefix)."""
    # select_machine comes before every backend and device (qemu_init).
    machine_refused = machine_error(spec, version)
    if machine_refused is not None:
        return machine_refused
    line = parse_vm(spec)
    vn = version.major * 100 + version.minor
    if line.drives or line.devices or line.chardevs or line.cpu:
        done = _realize_cached(spec, line, version, vn, host)
        if done.error is not None:
            return done.error
        blockers = MigrationBlockers(line.only_migratable, list(done.reasons), list(done.unmigratable))
        handlers = list(done.handlers)
    else:
        blockers = MigrationBlockers(line.only_migratable)
        handlers = []
    runstate = "prelaunch" if line.start_paused else "running"
    if role == "destination":
        runstate = "inmigrate"
    return Machine(
        version=version,
        host=host,
        role=role,
        vn=vn,
        runstate=runstate,
        blockers=blockers,
        handlers=handlers,
        kvm_dirty_ring=host.kvm and host.dirty_ring and line.accel != "tcg",
        autostart=not line.start_paused,
        drives=sum(1 for is_blockdev, options in line.drives if _is_qcow2(options, blockdev=is_blockdev)),
        memory=spec.memory,
        devices=line.devices,
        chardevs={chardev_id: backend for backend, chardev_id in line.chardevs},
        objects=dict(line.objects),
        referenced=line.referenced,
        machine_type=machine_type(spec, version, line.devices),
        ram_backend=any("memory-backend=" in text for text in (spec.machine, *spec.args)),
        early_sections=sum(1 for b, _ in line.chardevs if b in catalog.CHARDEV_SECTIONS and version >= V10_1),
    )


BUS_NO_HOTPLUG = "Bus 'pcie.0' does not support hotplugging"


def hotplug_device(vm: Machine, device: DeviceSpec) -> str | None:
    """``device_add`` once the machine is ready (qdev_device_add_from_qdict, system/qdev-monitor.c).

    Refused while a migration runs ("device_add not allowed while migrating", measured on both versions:
    checked before the device is created, so the busy-blocker path is never reached). Otherwise the device is
    realized like at startup, on buses whose slots the earlier devices already took: check_only_migratable
    and migrate_add_blocker (e.g. ivshmem peer mode, measured with -only-migratable on both versions) refuse
    it with the same texts as at startup.
    """
    # q35's pcie.0 takes no hot-plug (only its root ports' buses do); i440fx's pci.0 does (ACPI, measured).
    # 7.2 to 9.2 check the bus before the migration: qdev_device_add_from_qdict's qbus_is_hotpluggable test
    # precedes its migration_is_idle (9.2: migration_is_running) test, read in 7.2.22 and in 8.0.0 c1eb2ddf0f80,
    # 8.1.0 7e5a8bb22368, 8.2.0 1600b9f46b1b, 9.0.0 c25df57ae8f9, 9.1.0 fd1952d814da, 9.2's soft freeze
    # daaf51001a13 (docs/real-qemu-facts.md, "8.x and 9.x rules: sources"). 10.0.2 and 10.2.2 test the bus
    # after it, in qdev_hotplug_allowed(dev, bus, errp). Measured: "Bus 'pcie.0' does not support hotplugging"
    # for a virtio-rng-pci without bus= on 7.2.22, 10.0.2, 10.2.2.
    cold_bus = catalog.is_pci_driver(device.driver) and device.properties.get("bus", "pcie.0") == "pcie.0"
    cold_bus = cold_bus and not vm.machine_type.startswith(I440FX)
    if cold_bus and vm.version < V10_0:
        return BUS_NO_HOTPLUG
    if vm.migration is not None:
        return "device_add not allowed while migrating"
    if cold_bus:
        return BUS_NO_HOTPLUG
    buses = buses_for(vm.machine_type)
    # Replay the existing devices on a scratch machine to rebuild the bus occupancy.
    scratch = Machine(
        version=vm.version,
        host=vm.host,
        role=vm.role,
        vn=vm.vn,
        runstate=vm.runstate,
        blockers=MigrationBlockers(),
        objects=vm.objects,
        machine_type=vm.machine_type,
        chardevs=vm.chardevs,
    )
    _realize_devices(scratch, vm.devices, buses)
    taken = {d.id for d in vm.devices if d.id is not None}
    error = _realize_devices(vm, (device,), buses, taken)
    if error is None:
        vm.devices = (*vm.devices, device)
    return error


def _realize_devices(
    vm: Machine, devices: tuple[DeviceSpec, ...], buses: Buses | None = None, taken_ids: set[str] | None = None
) -> str | None:
    """Realize ``devices`` in order; QEMU's error for the first that fails. ``taken_ids``: device ids already
    in use (the devices realized before a hot-plug)."""
    buses = buses if buses is not None else buses_for(vm.machine_type)
    taken = set(taken_ids or ())
    vfio_state: VfioMachineState | None = None
    viommu = False
    unnamed_vfio = 0
    for device in devices:
        driver = device.driver
        model = catalog.model_for(driver)
        if model is not None and model.since is not None and vm.version < model.since:
            return f"'{driver}' is not a valid device model name"
        if model is not None and model.bus == "sysbus" and model.viommu and buses.root != "pcie.0":
            return NOT_DYNAMIC_SYSBUS
        if driver == "usb-host":
            # usb_host_realize looks the host's USB devices up ("failed to find host usb device 99:99",
            # measured on 7.2.22 and 10.0.2): a fact of the host, not of QEMU.
            raise NotModelled("usb-host (whether the host has the USB device)")
        if device.id is not None:
            # qdev_device_add_from_qdict: the bus is looked up before the device is created, its id set
            # (qdev_set_id: "Duplicate device ID") before it is realized (where a PCI slot is taken).
            if device.id in taken:
                if catalog.is_usb_device(driver) and buses.usb_controller is None:
                    return f"No 'usb-bus' bus found for device '{driver}'"
                return f"Duplicate device ID '{device.id}'"
            taken.add(device.id)
        chardev = device.properties.get("chardev")
        if chardev is not None and chardev not in vm.chardevs:
            # set_chardev (hw/core/qdev-properties-system.c, 7.2 and 10.0.2), before realize: measured with
            # usb-serial on 7.2.22, 10.0.2, 10.2.2 (it comes before -only-migratable's check_only_migratable).
            return f"Property '{driver}.chardev' can't find value '{chardev}'"
        if driver == "hv-syndbg":
            # hv_syndbg_realize: a vmbus-bridge first (which needs Hyper-V CPU features: not modelled).
            if not any(d.driver == "vmbus-bridge" for d in vm.devices):
                return "hv-syndbg device requires vmbus-bridge device"
            raise NotModelled("hv-syndbg with a vmbus-bridge")
        memdev = device.properties.get("memdev") if driver in catalog.MEMDEV_DRIVERS else None
        if memdev is not None and memdev not in vm.objects:
            # object_set_properties_from_keyval sets the link before realize: object_resolve_link (qom/object.c,
            # read in 7.2.22 and 10.0.2) finds no memory-backend of that name anywhere in the QOM tree.
            return f"Device '{memdev}' not found"
        path: str | None = None
        if catalog.is_pci_driver(driver):
            path, error = take_pci_slot(buses, device)
            if error is not None:
                return error
        elif catalog.is_usb_device(driver):
            if buses.usb_controller is None:
                return f"No 'usb-bus' bus found for device '{driver}'"
            if "bus" in device.properties and len(buses.usb_ports) > 1:
                raise NotModelled("a USB device naming its bus among several USB controllers")
            port = buses.usb_ports[buses.usb_controller] = buses.usb_ports.get(buses.usb_controller, 0) + 1
            path = f"{buses.usb_controller}/{port}"
        if model is not None:
            if model.unmigratable_vmsd is not None:
                # check_only_migratable (hw/core/qdev.c), before realize.
                if vm.blockers.only_migratable:
                    qom_type = model.only_migratable_type()
                    return f"Device {qom_type} is not migratable, but --only-migratable was specified"
                if model.idstr_without_path or path is None:
                    idstr = model.unmigratable_vmsd
                else:
                    idstr = f"{path}/{model.unmigratable_vmsd}"
                vm.blockers.unmigratable.append(idstr)
            if model.usb_host_controller and path is not None:
                # A USB device without bus= goes to the newest controller's bus: bus_add_child inserts each
                # device at the head of its bus's children, and qbus_find_recursive walks them in that order
                # (measured: ich9-usb-uhci1 then qemu-xhci, the usb-serial is '0000:00:02.0/1/usb-serial' on
                # 7.2.22, 10.0.2, 10.2.2).
                buses.usb_controller = path
                buses.usb_ports.setdefault(path, 0)
        if driver in catalog.IVSHMEM_DRIVERS and device.properties.get("master", "off") not in ("on", "true"):
            error = vm.blockers.add(catalog.IVSHMEM_PEER_BLOCKER)
            if error is not None:
                return error
        if driver == "vfio-pci":
            if vfio_state is None:
                vfio_state = VfioMachineState(version=vm.version, host=vm.host, blockers=vm.blockers)
            vfio_state.viommu = viommu
            name = placeholder_name(device.id, unnamed_vfio)
            if device.id is None:
                unnamed_vfio += 1
            error = _vfio_realize(device, name, vfio_state, vm)
            if error is not None:
                return error
        if model is not None and model.viommu:
            viommu = True
    return None


def _vfio_realize(device: DeviceSpec, name: str, state: VfioMachineState, vm: Machine) -> str | None:
    """Hand one vfio-pci device to the VFIO model (reference_impl.vfio.realize), imported lazily."""
    from reference_impl.vfio.realize import vfio_realize

    result = vfio_realize(device, name, state)
    if result.error is not None:
        return result.error
    if result.handler is not None:
        vm.handlers.append(result.handler)
    return None
