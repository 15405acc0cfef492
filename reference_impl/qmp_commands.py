"""Raw ``qmp`` steps: the QMP commands scenarios send directly, each mirroring its QEMU handler.

A scenario's ``qmp`` step may hot-add or remove what adds migration blockers (device_add, chardev-add,
blockdev-add), or drive the migration by hand (migrate, migrate-incoming). A command the model has no
handler for, an argument it does not read, or a URI scheme it cannot follow raises
:class:`~reference_impl.limits.NotModelled`: the model says what it does not know rather than answer ``{}``
for it. Only commands read in QEMU's source to have no effect on migration answer ``{}`` without a handler
(:data:`NO_MIGRATION_EFFECT`). Texts measured on QEMU 10.0.2 and 7.2.22 (docs/real-qemu-facts.md#qmp-steps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from contract.scenario import DeviceSpec
from reference_impl import catalog
from reference_impl import migration as mig
from reference_impl.capabilities import capability_names
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine, hotplug_device
from reference_impl.pci_buses import I440FX
from reference_impl.qmp_dirtylimit import HANDLERS as DIRTYLIMIT_HANDLERS
from reference_impl.qmp_jobs import ARGUMENTS as JOB_ARGUMENTS
from reference_impl.qmp_jobs import HANDLERS as JOB_HANDLERS
from reference_impl.qmp_migrate_uri import migrate_command, migrate_incoming_command
from reference_impl.qmp_postcopy import ARGUMENTS as POSTCOPY_ARGUMENTS
from reference_impl.qmp_postcopy import HANDLERS as POSTCOPY_HANDLERS


def _busy(vm: Machine) -> bool:
    """``is_busy`` in migrate_add_blocker_normal (migration/migration.c): a migration or savevm runs."""
    return vm.migration is not None or vm.runstate == "save-vm"


def _option_text(value: Any) -> str:
    """A QAPI argument as the QemuOpts string the command-line parser would have seen."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


def chardev_add(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_chardev_add`` (chardev/char.c): the backend's open may add a blocker; a failure is prefixed
    "Failed to add chardev '<id>': " (measured: qemu-vdagent during a migration, both versions)."""
    chardev_id = str(arguments.get("id", ""))
    if chardev_id in vm.chardevs:
        # qmp_chardev_add checks qemu_chr_find first, before the "Failed to add chardev" prefix applies (read in
        # 7.2.22, 10.0.2 and 10.2.2 chardev/char.c; measured on 7.2.22, found by migconform fuzz).
        return f"Chardev with id '{chardev_id}' already exists"
    backend = arguments.get("backend", {})
    kind = str(backend.get("type", "")) if isinstance(backend, Mapping) else ""
    reason = catalog.chardev_blocker(kind, vm.version)
    if reason is not None:
        error = vm.blockers.add(reason, busy=_busy(vm))
        if error is not None:
            return f"Failed to add chardev '{chardev_id}': {error}"
    vm.chardevs[chardev_id] = kind
    return None


def chardev_remove(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_chardev_remove``: finalizing the chardev drops its blocker (vdagent_chr_fini: migrate_del_blocker)."""
    chardev_id = str(arguments.get("id", ""))
    kind = vm.chardevs.pop(chardev_id, None)
    if kind is None:
        return f"Chardev '{chardev_id}' not found"
    reason = catalog.chardev_blocker(kind, vm.version)
    if reason is not None:
        vm.blockers.remove(reason)
    return None


def blockdev_add(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_blockdev_add``: opening the node adds the format's blockers in order, the busy check applies
    (measured: vvfat rw during a migration reports its internal qcow node first, with no prefix)."""
    options = {str(k): _option_text(v) for k, v in arguments.items() if not isinstance(v, Mapping)}
    for reason in catalog.drive_blockers(options, blockdev=True):
        error = vm.blockers.add(reason, busy=_busy(vm))
        if error is not None:
            return error
    return None


def device_add(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_device_add``: see machine.hotplug_device."""
    props = {str(k): _option_text(v) for k, v in arguments.items() if k not in ("driver", "id")}
    dev_id = arguments.get("id")
    device = DeviceSpec(str(arguments.get("driver", "")), str(dev_id) if dev_id is not None else None, props)
    return hotplug_device(vm, device)


def device_del(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_device_del``: only a request to the guest; without a guest OS a PCIe unplug never completes, so
    the device (and any blocker it added) stays (measured: ivshmem hot-added then deleted still blocks).

    qdev_unplug checks the bus's and the device's hotplug support, then refuses while this VM's outgoing
    migration runs: "device_del not allowed while migrating" (7.2: !migration_is_idle(); 10.0/10.2:
    migration_is_running(); both spare a device with allow_unplug_during_migration, the virtio-net failover
    primary). The incoming side does not count: device_del on a destination during the migration is accepted
    (measured on 7.2.22, 10.0.2, 10.2.2). Only devices on a PCIe root port are modelled: another bus's hotplug
    support decides first."""
    dev_id = arguments.get("id")
    device = next((d for d in vm.devices if d.id == dev_id), None)
    if device is None:
        return f"Device '{dev_id}' not found"
    if catalog.is_usb_device(device.driver):
        return _unplug_usb(vm, device)
    ports = {d.id for d in vm.devices if d.driver == "pcie-root-port"}
    if vm.machine_type.startswith(I440FX) and catalog.is_pci_driver(device.driver):
        # i440fx's pci.0 unplugs through ACPI, which also waits for the guest (measured: nvme hot-added on pc,
        # device_del'd, and the migrate after it is still blocked on 7.2.22, 10.0.2, 10.2.2).
        ports |= {None, "pci.0"}
    if device.properties.get("bus") not in ports or "failover" in device.properties:
        raise NotModelled(f"device_del of a {device.driver} that is not on a pcie-root-port")
    if vm.migration is not None:
        return "device_del not allowed while migrating"
    return None


def _unplug_usb(vm: Machine, device: DeviceSpec) -> str | None:
    """A USB device's unplug needs no guest: qdev_unplug's migration check, then the usb-bus hotplug handler
    (qdev_simple_device_unplug_cb) unrealizes it at once, unregistering its vmsd (vmstate_unregister in
    device_unrealize), so an unmigratable one no longer blocks (measured: usb-wacom-tablet hot-added,
    device_del'd, and the migrate that follows completes on 7.2.22, 10.0.2, 10.2.2). Only the newest USB
    device is followed: removing another frees a port that the next hot-plug takes (paths not modelled)."""
    usb = [d for d in vm.devices if catalog.is_usb_device(d.driver)]
    if usb[-1] is not device:
        raise NotModelled("device_del of a USB device that is not the newest one")
    if vm.migration is not None:
        return "device_del not allowed while migrating"
    model = catalog.model_for(device.driver)
    vmsd = model.unmigratable_vmsd if model is not None else None
    if vmsd is not None:
        mine = [i for i, idstr in enumerate(vm.blockers.unmigratable) if idstr.endswith(f"/{vmsd}")]
        del vm.blockers.unmigratable[mine[-1]]
    vm.devices = tuple(d for d in vm.devices if d is not device)
    return None


# Arguments each migration command's handler reads; migrate and migrate-incoming check their own
# (reference_impl.qmp_migrate_args: QAPI's "unexpected" refusals depend on the version).
MODELLED_ARGUMENTS: dict[str, frozenset[str]] = {
    **POSTCOPY_ARGUMENTS,
    **JOB_ARGUMENTS,
}
# qom-types whose object-add the model follows, with the arguments it reads and those each needs. A RAM
# backend adds no blocker and succeeds with an id and a size (host_memory_backend_memory_complete); an
# authz-simple with an identity, a secret with inline data, neither of which migration looks at (object-add
# has no migration check: accepted during a migration, measured on 7.2.22, 10.0.2, 10.2.2).
MODELLED_OBJECTS: dict[str, frozenset[str]] = {
    "memory-backend-ram": frozenset({"qom-type", "id", "size", "share"}),
    "authz-simple": frozenset({"qom-type", "id", "identity"}),
    "secret": frozenset({"qom-type", "id", "data"}),
}
REQUIRED_OBJECT_ARGUMENTS: dict[str, frozenset[str]] = {
    "memory-backend-ram": frozenset({"id", "size"}),
    "authz-simple": frozenset({"id", "identity"}),
    "secret": frozenset({"id", "data"}),
}
# Commands that exist in every profiled version (7.2+) and only read state: they answer their data and never
# refuse without arguments; the model predicts their ``{}``-equivalent (no error) and no change.
NO_MIGRATION_EFFECT = frozenset(
    {
        "query-status",
        "query-migrate",
        "query-migrate-capabilities",
        "query-migrate-parameters",
        "query-version",
        "query-name",
        "query-block",
        "query-jobs",
        "query-cpus-fast",
        "query-kvm",
        "query-chardev",
        "query-pci",
        # 7.2+ migration and dirty-rate queries: state reads with no error path (qmp_query_colo_status,
        # qmp_query_migrationthreads, qmp_query_dirty_rate, qmp_query_vcpu_dirty_limit: NULL when no limit runs).
        "query-colo-status",
        "query-migrationthreads",
        "query-dirty-rate",
        "query-vcpu-dirty-limit",
    }
)


def _check_arguments(command: str, arguments: Mapping[str, Any]) -> None:
    modelled = MODELLED_ARGUMENTS.get(command)
    if modelled is None:
        return
    unknown = sorted(set(arguments) - modelled)
    if unknown:
        raise NotModelled(f"{command} argument {unknown[0]!r}")


def object_add(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_object_add`` (qom/object_interfaces.c) for the qom-types in :data:`MODELLED_OBJECTS`. The new
    object becomes a child of /objects named by its id (user_creatable_add_type ->
    object_property_try_add_child): an id already taken is refused by object_property_try_add, with the same
    text in 7.2.22's and 10.0.2's qom/object.c."""
    qom_type = str(arguments.get("qom-type", ""))
    modelled = MODELLED_OBJECTS.get(qom_type)
    if modelled is None:
        raise NotModelled(f"object-add of qom-type {qom_type!r}")
    unknown = sorted(set(arguments) - modelled)
    if unknown or not REQUIRED_OBJECT_ARGUMENTS[qom_type] <= set(arguments):
        raise NotModelled(f"object-add {qom_type} with arguments {sorted(arguments)}")
    object_id = str(arguments["id"])
    if object_id in vm.objects:
        return f"attempt to add duplicate property '{object_id}' to object (type 'container')"
    vm.objects[object_id] = qom_type
    return None


def object_del(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_object_del`` -> user_creatable_del (qom/object_interfaces.c, same in 7.2, 10.0, 10.2): an id
    that is not a child of /objects is "object '<id>' not found"; one in use (a memory backend a device or
    the machine maps: user_creatable_can_be_deleted) is refused: not modelled. No migration check: deleting an
    unused object during a migration is accepted (measured on 7.2.22, 10.0.2, 10.2.2)."""
    object_id = str(arguments.get("id", ""))
    if object_id not in vm.objects:
        return f"object '{object_id}' not found"
    users = set(vm.referenced) | {str(v) for d in vm.devices for v in d.properties.values()}
    if object_id in users:
        raise NotModelled(f"object-del of an object something may use ({object_id!r})")
    del vm.objects[object_id]
    return None


def set_capabilities_raw(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate_set_capabilities`` sent raw: the QAPI input visitor reads the list first and refuses a
    ``state`` that is not a JSON boolean (qobject_input_type_bool: "Invalid parameter type for
    'capabilities[N].state', expected: boolean", measured on 7.2.22, 10.0.2, 10.2.2). A later entry of the
    same capability wins (the handler walks the list in order), as in the step action."""
    entries = arguments.get("capabilities", [])
    if not isinstance(entries, list) or not all(
        isinstance(c, Mapping) and set(c) == {"capability", "state"} for c in entries
    ):
        raise NotModelled("migrate-set-capabilities with a malformed list")
    for index, entry in enumerate(entries):
        if not isinstance(entry["capability"], str):
            raise NotModelled("migrate-set-capabilities with a capability that is not a string")
        if entry["capability"] not in capability_names(vm.version):
            break  # the visitor refuses the name first (set_capabilities words it)
        if not isinstance(entry["state"], bool):
            return f"Invalid parameter type for 'capabilities[{index}].state', expected: boolean"
    return mig.set_capabilities(vm, {str(c["capability"]): bool(c["state"]) for c in entries})


_HANDLERS: dict[str, Callable[[Machine, Mapping[str, Any]], str | None]] = {
    "chardev-add": chardev_add,
    "chardev-remove": chardev_remove,
    "blockdev-add": blockdev_add,
    "device_add": device_add,
    "device_del": device_del,
    "migrate": migrate_command,
    "migrate-incoming": migrate_incoming_command,
    "object-add": object_add,
    "object-del": object_del,
    **DIRTYLIMIT_HANDLERS,
}


def _connect_failure(scene: mig.Scene, vm: Machine) -> None:
    """A raw ``migrate`` whose socket connect fails (nothing listens on the scenario's address): the connect
    runs in a thread and its callback (socket_outgoing_migration -> migration_channel_connect -> 7.2
    migrate_fd_error, 10.x migration_connect_set_error) moves setup -> failed in the main loop. The final read
    waits for the source to leave setup, so a scenario that ends here reads failed (events setup, failed;
    measured on 7.2.22, 10.0.2, 10.2.2). A next step on the source races that callback (a second migrate:
    accepted 2 of 3, "There's a migration process in progress" 1 of 3 on each): steps.run_step says so."""
    m = vm.migration
    if m is not None and m.failure is not None and m.transport in mig.SOCKET_TRANSPORTS and not m.fails_when_active:
        mig.finish(scene, vm)
        scene.connect_race = True


def run_qmp(scene: mig.Scene, vm: Machine, command: str, arguments: Mapping[str, Any]) -> str | None:
    """One raw ``qmp`` step on ``vm``: QEMU's error text, or None for ``{}``; raises
    :class:`~reference_impl.limits.NotModelled` for what the model does not follow."""
    _check_arguments(command, arguments)
    handler = _HANDLERS.get(command)
    if handler is not None:
        error = handler(vm, arguments)
        if command == "migrate" and error is None:
            _connect_failure(scene, vm)
        return error
    # Handlers that need the pair (the peer's migration, the jobs each VM created).
    scene_handler = POSTCOPY_HANDLERS.get(command) or JOB_HANDLERS.get(command)
    if scene_handler is not None:
        return scene_handler(scene, vm, arguments)
    if command == "migrate-set-capabilities":
        return set_capabilities_raw(vm, arguments)
    if command == "migrate-set-parameters":
        return mig.set_parameters(vm, dict(arguments))
    if command == "migrate-start-postcopy":
        return mig.start_postcopy(vm)
    if command == "migrate_cancel":
        return mig.cancel(scene, vm)
    if command == "quit":
        mig.quit_vm(scene, vm)
        return None
    if command == "cont":
        return mig.cont(vm)
    if command == "stop":
        return mig.stop(vm)
    if command == "dump-guest-memory":
        return mig.dump_guest_memory(vm, arguments)
    if command in NO_MIGRATION_EFFECT and not arguments:
        return None
    raise NotModelled(f"QMP command {command!r}")
