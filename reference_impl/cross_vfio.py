"""VFIO devices between two QEMU versions: which side's rules decide, and where the stream's "vfio" sections meet.

Everything VFIO does before a stream exists is one side's business and already follows that side's version
(each VM is realized with its own profile): realize gating (``vfio_realize`` → ``vfio_migration_realize``,
enable-migration, blockers: reference_impl.vfio.realize), the source's ``migrate`` refusals (a blocker in
``migrate_prepare``; ``vfio_save_prepare``'s postcopy / background-snapshot gate, 8.2+, on the source only:
``qemu_savevm_state_prepare`` runs in the source's ``migrate_init``). A 7.2 side knows only the v1 migration
region (``vfio_migration_probe``, VFIO_REGION_TYPE_MIGRATION_DEPRECATED), which no kernel since 5.18 offers,
so its device is always blocked ("VFIO device doesn't support migration") and registers no savevm handler.

What this module adds is where the two sides meet, the device's savevm section:

- its idstr: ``vfio_migration_init`` registers ``"<qdev path>/vfio"`` (``vmstate_if_get_id`` gives the PCI path,
  e.g. ``0000:00:01.0/vfio`` for the first device on pc-q35, measured) with instance VMSTATE_INSTANCE_ID_ANY (0
  for the first), in 7.2 (v1), 10.0.2 and 10.2.2 alike (hw/vfio/migration.c). The section is live:
  ``qemu_savevm_state_setup`` sends its QEMU_VM_SECTION_START right after RAM's, so a destination without that
  handler (a 7.2 destination; a 10.x one whose device is blocked) fails in ``qemu_loadvm_section_start_full``
  (7.2.22 and 10.0.2: error_report "Unknown savevm section or instance '0000:00:01.0/vfio' 0. ...", then the last
  line "load of migration failed: Invalid argument"; 10.2.2: error_setg "Unknown section or instance ...",
  appended to that line) at the first device section, while a socket's source is still sending:
  :func:`unloaded_section`;
- its content between 10.0 and 10.2 (:func:`check_pair`): the same markers (VFIO_MIG_FLAG_END_OF_STATE,
  DEV_CONFIG_STATE, DEV_SETUP_STATE, DEV_DATA_STATE, DEV_INIT_DATA_SENT; 10.1's DEV_CONFIG_LOAD_READY only
  in ``vfio_save_state`` when the device state goes over multifd), the same config state
  (``vfio_pci_save_config``: ``vmstate_vfio_pci_config`` and ``vmstate_pci_device`` unchanged, only
  renames), and the device data are the vendor driver's bytes passed through unread. So without multifd the
  section 10.0 writes is the section 10.2 writes and each loads the other's (``vfio_load_state``), given
  the same kernel driver on both sides. With multifd, ``vfio_multifd_setup`` (both) turns the device state
  transfer on for x-migration-multifd-transfer=auto when ``multifd_device_state_supported()`` and
  ``send-switchover-start`` (a migration property the machine type's compat sets: hw_compat_9_2 off); the
  packets are the same in both too (:func:`check_stream`), and 10.1's x-migration-load-config-after-iter
  (hw_compat_10_0 off; auto is on for ARM only, ``vfio_arch_wants_loading_config_after_iter``) changes
  the main channel only when set.
"""

from __future__ import annotations

from reference_impl.capabilities import N8_0, N10_0
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.pci_buses import pci_paths
from reference_impl.vfio.api import placeholder_name
from reference_impl.vfio.handlers import VfioSaveHandlers

VFIO_SECTION = "vfio"


def vfio_sections(vm: Machine) -> list[tuple[str | None, VfioSaveHandlers | None]]:
    """Each vfio-pci device's section idstr (None off a modelled PCI path) and its savevm handler (None: the
    device registered none, ``vfio_migration_init`` never ran or failed), in realize order."""
    handlers = {h.name: h for h in vm.handlers if isinstance(h, VfioSaveHandlers)}
    sections: list[tuple[str | None, VfioSaveHandlers | None]] = []
    unnamed = 0
    for device, path in zip(vm.devices, pci_paths(vm.devices, vm.machine_type), strict=True):
        if device.driver != "vfio-pci":
            continue
        name = placeholder_name(device.id, unnamed)
        if device.id is None:
            unnamed += 1
        sections.append((None if path is None else f"{path}/{VFIO_SECTION}", handlers.get(name)))
    return sections


def unloaded_section(source: Machine, destination: Machine) -> str | None:
    """The idstr of the first "vfio" section the source sends that the destination has no handler for
    (``find_se`` in ``qemu_loadvm_section_start_full``), else None. Only the source's devices with a handler
    send one (``register_savevm_live`` in ``vfio_migration_init``)."""
    sending = [(idstr, h) for idstr, h in vfio_sections(source) if h is not None]
    if not sending:
        return None
    loading = {idstr for idstr, h in vfio_sections(destination) if h is not None}
    for idstr, _ in sending:
        if idstr is None:
            raise NotModelled("the PCI path of a vfio-pci device (its savevm section's idstr)")
        if idstr not in loading:
            return idstr
    return None


def _loaded(source: Machine, destination: Machine) -> list[tuple[VfioSaveHandlers, VfioSaveHandlers]]:
    """The (source, destination) handlers of each "vfio" section both sides handle."""
    theirs = dict(vfio_sections(destination))
    pairs = []
    for idstr, handler in vfio_sections(source):
        other = theirs.get(idstr)
        if handler is not None and other is not None:
            pairs.append((handler, other))
    return pairs


def check_pair(source: Machine, destination: Machine) -> None:
    """NotModelled, once both VMs are realized, for a "vfio" section two different versions would both handle
    where QEMU's source does not decide whether it loads: a v1 side (a host with the v1 region, 7.2's
    ``vfio_migration_probe`` succeeding), a version pair whose ``vfio_save_*`` / ``vfio_load_state`` were not
    read (both sides 10.0+ only), a device whose kernel driver differs between the sides (another
    personality: the data are the driver's). (Sections nothing loads: the source is blocked and refuses
    migrate, or :func:`unloaded_section`.)"""
    pair = f"{source.version.short} -> {destination.version.short}"
    for handler, other in _loaded(source, destination):
        if min(source.vn, destination.vn) < N8_0:
            raise NotModelled(f"a VFIO v1 migration stream across QEMU versions ({pair})")
        if min(source.vn, destination.vn) < N10_0:
            raise NotModelled(f"the vfio section's format between {pair} (read for 10.0.2 and 10.2.2 only)")
        if handler.personality != other.personality:
            raise NotModelled("a VFIO device whose kernel driver differs between the sides (its data are the driver's)")


# vfio-pci properties that change what goes over the multifd channels or how much the destination queues
# (vfio_multifd_setup, vfio_load_config_after_iter; 10.1's x-migration-max-queued-buffers-size): the model
# follows only their defaults across versions.
MULTIFD_PROPERTIES = frozenset(
    {"x-migration-multifd-transfer", "x-migration-load-config-after-iter", "x-migration-max-queued-buffers-size"}
)


def check_stream(source: Machine, destination: Machine) -> None:
    """NotModelled for a stream between two versions whose "vfio" section both load, with multifd on, where a
    device sets one of :data:`MULTIFD_PROPERTIES` (capabilities are set by the steps, so this is checked when
    the stream is resolved). With their defaults both sides decide alike (``vfio_multifd_setup``: auto =
    ``multifd_device_state_supported()`` (multifd, no mapped-ram, no multifd compression) and
    ``send-switchover-start``, the machine type's compat), and what goes over the channels is the same in
    10.0.2 and 10.2.2: VFIODeviceStatePacket version 0 with the VFIO_DEVICE_STATE_CONFIG_STATE flag
    (hw/vfio/migration-multifd.c), MultiFDPacketDeviceState_t with MULTIFD_FLAG_DEVICE_STATE
    (migration/multifd.h), and on the main channel the dummy end of state of ``vfio_save_state`` /
    ``vfio_save_complete_precopy`` (DEV_CONFIG_LOAD_READY only for load-config-after-iter, auto on ARM only).
    Measured: 10.0.2 <-> 10.2.2 with multifd on both sides completed, 3 of 3 each way."""
    if source.vn == destination.vn or not _loaded(source, destination):
        return
    if "multifd" not in source.caps and "multifd" not in destination.caps:
        return
    for vm in (source, destination):
        for device in vm.devices:
            if device.driver == "vfio-pci" and MULTIFD_PROPERTIES & set(device.properties):
                pair = f"{source.version.short} -> {destination.version.short}"
                raise NotModelled(f"a VFIO device's multifd properties across QEMU versions ({pair})")
