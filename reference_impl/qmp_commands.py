"""Raw ``qmp`` steps: the QMP commands scenarios send directly, each mirroring its QEMU handler.

A scenario's ``qmp`` step may hot-add or remove what adds migration blockers (device_add, chardev-add,
blockdev-add), or drive the migration by hand (migrate, migrate-incoming). A command the model has no
handler for, an argument it does not read, or a URI scheme it cannot follow raises
:class:`~reference_impl.limits.NotModelled`: the model says what it does not know rather than answer ``{}``
for it. Only commands read in QEMU's source to have no effect on migration answer ``{}`` without a handler
(:data:`NO_MIGRATION_EFFECT`). Texts measured on QEMU 10.0.2 and 7.2.22 (docs/real-qemu-facts.md#qmp-steps).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from contract.scenario import DeviceSpec
from reference_impl import catalog, uri_parse
from reference_impl import migration as mig
from reference_impl import qmp_migrate_args as migrate_args
from reference_impl.capabilities import N8_0, N8_2, N9_1, capability_names
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine, hotplug_device
from reference_impl.migration_prechecks import transport_check
from reference_impl.pci_buses import I440FX
from reference_impl.qmp_dirtylimit import HANDLERS as DIRTYLIMIT_HANDLERS
from reference_impl.qmp_jobs import ARGUMENTS as JOB_ARGUMENTS
from reference_impl.qmp_jobs import HANDLERS as JOB_HANDLERS
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


# URI schemes qmp_migrate dispatches on (migration/migration.c); anything else is not a migration protocol.
URI_SCHEMES = frozenset({"tcp", "unix", "file", "exec", "fd", "rdma", "vsock"})
# Of those, the ones the model follows: rdma needs an RDMA device (and a build with it), vsock a vsock
# transport; their failure texts come from code the model does not mirror. fd: is followed as far as the
# harness can take it: no descriptor is ever passed (getfd), so the name is not found (reference_impl.uri_parse).
MODELLED_SCHEMES = frozenset({"tcp", "unix", "file", "exec", "fd"})
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


def _file_open_error(vm: Machine, path: str, verb: str) -> str:
    """qio_channel_file_new_path failing on a missing file or folder: 8.2/9.0 call qemu_open_old and say "Unable
    to open <path>" (io/channel-file.c of 8.2.0 and 9.0.0); 9.1+ call qemu_open / qemu_create, whose error names
    the verb and quotes the path (commit 46cec74c1b "io: Stop using qemu_open_old in channel-file", June 2024)."""
    if vm.vn < N9_1:
        return f"Unable to open {path}: No such file or directory"
    return f"Could not {verb} '{path}': No such file or directory"


def migrate_uri(vm: Machine, uri: str) -> str | None:
    """``qmp_migrate`` with a URI chosen by the scenario (not by the executor).

    - 8.2+ parses the URI first (migrate_uri_parse): an unknown scheme is refused with status none
      ("unknown migration protocol: bogus:x", measured on 10.0.2). Before 8.2 the dispatch comes after
      migrate_init: "Parameter 'uri' expects a valid migration protocol" and setup -> failed (7.2.22).
    - file: whose directory does not exist: the open fails after migrate_init ("Could not create '<path>':
      No such file or directory", status failed, measured on 10.0.2; 8.2/9.0: :func:`_file_open_error`).
    - unix: to a path that does not exist: accepted, then "Failed to connect to '<path>': No such file or
      directory" (measured on both); tcp: nobody listens (the executor never listens on a URI it did not make).
    The model asks the host filesystem whether the path exists, as QEMU's open/connect would.
    """
    scheme, _, target = uri.partition(":")
    if scheme in URI_SCHEMES and scheme not in MODELLED_SCHEMES:
        raise NotModelled(f"migrate URI scheme {scheme!r}")
    if scheme not in URI_SCHEMES and vm.vn >= N8_2:
        return f"unknown migration protocol: {uri}"
    transport = scheme if scheme in URI_SCHEMES else "invalid"
    start_error = _address_error(vm, scheme, target)
    if start_error is not None and vm.vn >= N8_2:
        return start_error  # migrate_uri_parse, before migrate_prepare: nothing changes
    path_error = None
    # The path is the scenario's, not the run's: QEMU prints it as given and the model predicts it literally
    # (harness.compare keeps a path the model wrote, and normalises only the others).
    path = uri_parse.file_offset(target)[0] if scheme == "file" else target
    if scheme == "file" and not os.path.isdir(os.path.dirname(path) or "."):
        path_error = _file_open_error(vm, path, "create")
    elif scheme == "file" and vm.vn >= N8_2 and os.path.exists(path) and not os.path.isfile(path):
        if not stat.S_ISCHR(os.stat(path).st_mode):
            raise NotModelled(f"migrate to file: {path!r}, which is not a regular file")
        # file_start_outgoing_migration ftruncates whatever it opened, even to 0: a device (/dev/null) gives
        # EINVAL (measured on 10.0.2 and 10.2.2 with file:/dev/null,offset=0x1000; status failed).
        offset = uri_parse.file_offset(target)[1] or 0
        path_error = f"failed to truncate migration file to offset {offset:x}: Invalid argument"
    elif scheme == "unix" and start_error is None and not os.path.exists(target):
        path_error = f"Failed to connect to '{target}': No such file or directory"
    elif scheme == "fd" and start_error is None:
        # fd_start_outgoing_migration: monitor_get_fd fails after migrate_init; migrate_fd_error: setup -> failed.
        start_error = uri_parse.fd_lookup_error(target)
    error = mig.migrate(vm, transport, peer_listening=False, path_error=path_error, start_error=start_error)
    if error is None and scheme == "exec":
        # Accepted, with the scenario's own command: what it does with the stream (exits at once, writes it
        # somewhere) is the command's (measured with exec:true: 7.2.22 "Unable to write to command: Broken
        # pipe", 10.x "ram_save_setup failed: Input/output error").
        # Even a command that drains the stream (exec:cat > /dev/null, completed on 7.2.22, 10.0.2 and 10.2.2)
        # ends on its own time: the executor's wait watches only its own migrate step's migration.
        raise NotModelled("migrate to exec: with the scenario's own command")
    if error is None and vm.migration is not None:
        vm.migration.raw = True
    return error


def _address_error(vm: Machine, scheme: str, target: str) -> str | None:
    """The URI's address refused by its parser (reference_impl.uri_parse): 8.2+ in migrate_uri_parse, 7.2-8.1 in
    socket_start_{outgoing,incoming}_migration's socket_parse, after migrate_init / the incoming setup event (8.0.0
    c1eb2ddf0f80 and 8.1.0 7e5a8bb22368 have 7.2's migration/socket.c, socket_parse and inet_parse)."""
    # 7.2-8.1 hand fd: names straight to the monitor lookup (no socket_parse): "fd:" is an unknown '' there.
    error = None if scheme == "fd" and vm.vn < N8_2 else uri_parse.socket_address_error(scheme, target)
    if error is None and scheme == "file" and vm.vn >= N8_2:
        error = uri_parse.file_offset(target)[2]
    return error


def migrate_command(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate`` with the scenario's arguments (reference_impl.qmp_migrate_args), then the URI model.

    ``resume`` on 10.0+: the URI parse (migrate_uri_parse) and migration_channels_and_transport_compatible
    come before migrate_prepare's "Cannot resume if there is no paused migration" (measured with bogus:x:
    10.0.2 and 10.2.2 "unknown migration protocol: bogus:x", 7.2.22 the resume refusal)."""
    error, uri = migrate_args.migrate(vm, arguments)
    if error is not None or uri is None:
        return error
    if arguments.get("resume") is True:
        scheme = uri.partition(":")[0]
        if scheme not in URI_SCHEMES:
            return f"unknown migration protocol: {uri}"
        if scheme not in MODELLED_SCHEMES:
            raise NotModelled(f"migrate URI scheme {scheme!r}")
        if vm.params.get("mode", "normal") != "normal":
            raise NotModelled("migrate resume in a CPR mode")
        return transport_check(vm, scheme) or migrate_args.NO_PAUSED_MIGRATION
    return migrate_uri(vm, uri)


def migrate_incoming_command(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate_incoming``: QAPI's refusals, then the 'once' flag and the runstate, then the arguments'
    own checks (qemu_start_incoming_migration)."""
    error = migrate_args.incoming_qapi_error(vm, arguments)
    if error is not None:
        return error
    if vm.incoming is not None or vm.runstate != "inmigrate":
        return mig.migrate_incoming(vm, "tcp")
    error, uri = migrate_args.migrate_incoming(vm, arguments)
    if error is not None or uri is None:
        return error
    return migrate_incoming_uri(vm, uri)


def migrate_incoming_uri(vm: Machine, uri: str) -> str | None:
    """``qmp_migrate_incoming`` with the scenario's URI (see migration.migrate_incoming): the 'once' flag and the
    runstate first, then qemu_start_incoming_migration. Measured on 7.2.22 and 10.0.2 (docs/real-qemu-facts.md,
    "QMP breadth"):

    - an unknown scheme (and file: before 8.2): "unknown migration protocol: <uri>"; 8.2+ refuses it in
      migrate_uri_parse before any state change, 7.2-8.1 after sending MIGRATION setup (status stays none; read
      in 8.0.0's and 8.1.0's qemu_start_incoming_migration);
    - unix: to a folder that does not exist: "Failed to bind socket to <path>: No such file or directory",
      file: (8.2+) that cannot be opened: "Could not open '<path>': No such file or directory" (8.2/9.0: "Unable
      to open <path>: ...", :func:`_file_open_error`); both after the
      incoming setup (10.0: status setup).
    exec: is accepted as before; a file: that exists would be loaded at once (not modelled).
    """
    scheme, _, target = uri.partition(":")
    if scheme in URI_SCHEMES and scheme not in MODELLED_SCHEMES:
        raise NotModelled(f"migrate-incoming URI scheme {scheme!r}")
    if vm.incoming is not None or vm.runstate != "inmigrate":
        return mig.migrate_incoming(vm, scheme)
    if scheme not in URI_SCHEMES or (scheme == "file" and vm.vn < N8_2):
        if vm.vn >= N8_2:
            return f"unknown migration protocol: {uri}"
        # 7.2-8.1 qemu_start_incoming_migration: the MIGRATION setup event is sent before the dispatch (8.0/8.1
        # first refuse a URI that multifd or postcopy-preempt cannot use: migration_channels_and_uri_compatible).
        error = transport_check(vm, "invalid") if vm.vn >= N8_0 else None
        if error is not None:
            return error
        vm.events.append("setup")
        return f"unknown migration protocol: {uri}"
    error = _address_error(vm, scheme, target)
    if error is not None:
        if vm.vn < N8_2:
            vm.events.append("setup")  # 7.2-8.1: qemu_start_incoming_migration sends it before the transport
        return error
    if scheme == "fd":
        return mig.migrate_incoming(vm, "fd", dispatch_error=uri_parse.fd_lookup_error(target))
    if scheme == "file":
        path = target.split(",")[0]
        if os.path.exists(path):
            raise NotModelled("migrate-incoming of an existing file (the destination loads it at once)")
        return mig.migrate_incoming(vm, "file", dispatch_error=_file_open_error(vm, path, "open"))
    if scheme == "unix" and not os.path.isdir(os.path.dirname(target) or "."):
        error = f"Failed to bind socket to {target}: No such file or directory"
        return mig.migrate_incoming(vm, "unix", dispatch_error=error)
    return mig.migrate_incoming(vm, scheme)


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
