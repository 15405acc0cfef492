"""What the destination's ``qemu_loadvm_state`` refuses, and the line it exits with.

A destination configured unlike its source cannot load the source's stream: qemu_loadvm_state fails with
EINVAL and process_incoming_migration_co makes the destination exit 1 with "load of migration failed: ...".
Since 10.2 the line names the cause (:func:`load_failure`); this module predicts the cause, in the order the
destination meets it in the stream.
"""

from __future__ import annotations

from contract.sizes import parse_mib
from reference_impl import catalog
from reference_impl.capabilities import N9_1, N10_1, N10_2
from reference_impl.cross import configuration_cause
from reference_impl.cross_vfio import check_stream, unloaded_section
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.pci_buses import pci_paths

# What the destination prints when its incoming stream breaks (cancel, source failure): QEMU 10.0.2 and
# 7.2.22 exit with status 1 and this last stderr line (docs/real-qemu-facts.md#cancel--failure).
DESTINATION_LOAD_FAILURE = "load of migration failed: Invalid argument"
# qemu_loadvm_section_part_end: a stream cut inside RAM's iterable section (section id 1 on the scenario VMs;
# the cancel's shutdown) fails check_section_footer. Measured on 10.2.2 (cancel-precopy-tcp, cancel-multifd,
# qmp-cancel-precopy, qmp-cancel-pre-switchover).
SECTION_FOOTER_ERROR = "Section footer error, section_id: 1"
# qemu_loadvm_section_start_full -> vmstate_load -> ram_load: another RAM size ("Length mismatch", -EINVAL)
# through the old-style load_state path, RAM's version_id 4 (measured on 10.2.2, precopy-memory-mismatch).
RAM_LOAD_ERROR = (
    "error while loading state for instance 0x0 of device 'ram': Failed to load vmstate version_id: 4, ret: -22"
)
# ui/vdagent.c: the section vdagent_chr_init registers (vmstate_register_any) since 10.1.
VDAGENT_SECTION = "vdagent"
# 10.2's vmstate_load_state wraps a failing post_load (vmstate_configuration: version_id 1, no minimum).
CONFIGURATION_POST_LOAD = "post load hook failed for: configuration, version_id: 1, minimum_version: 0, ret: -22"


def load_failure(vn: int, cause: str) -> str:
    """The destination's last stderr line when qemu_loadvm_state fails with EINVAL (process_incoming_migration_co).

    Before 10.2 it was only ``error_setg(&local_err, "load of migration failed: %s", strerror(-ret))``. Arun
    Menon's series merged for 10.2 ("migration: push Error **errp into qemu_loadvm_state()") passes an Error**
    down qemu_loadvm_state and prepends instead ("load of migration failed: %s: "), so the cause follows.
    """
    return f"{DESTINATION_LOAD_FAILURE}: {cause}" if vn >= N10_2 else DESTINATION_LOAD_FAILURE


def unknown_section(idstr: str, instance_id: int = 0) -> str:
    """qemu_loadvm_section_start_full: find_se finds no handler for a section the source sent."""
    return (
        f"Unknown section or instance '{idstr}' {instance_id}. Make sure that your current VM setup matches your "
        "saved VM setup, including any hotplugged devices"
    )


def state_blocked(idstr: str) -> str:
    """qemu_savevm_state_blocked, the first check of qemu_loadvm_state: an unmigratable vmsd on the destination."""
    return f"State blocked by non-migratable device '{idstr}'"


def config_mismatch(source: Machine, destination: Machine) -> str | None:
    """The line of a destination configured unlike the source, which cannot load its stream (exit 1), in the
    order qemu_loadvm_state meets the causes:
    - an unmigratable device on the destination: qemu_savevm_state_blocked comes first;
    - another RAM size: ram_load_precopy "Length mismatch" for the RAM block (the first section);
    - a "vfio" section the destination has no handler for (reference_impl.cross_vfio.unloaded_section: a
      7.2 destination, or a device blocked there), whose start comes right after RAM's;
    - a device the source has and the destination lacks (:func:`_missing_device`);
    - a vdagent chardev the destination lacks (10.1+, :func:`missing_vdagent`).
    Measured on 10.0.2 and 7.2.22 over exec (unmigratable-savevm-load-destination, precopy-memory-mismatch,
    precopy-device-mismatch): "load of migration failed: Invalid argument", source completed; 10.2.2 appends
    the cause (:func:`load_failure`). A device only on the destination that is migratable is assumed harmless
    (its state just is not sent).
    """
    vn = destination.vn  # the destination prints the line (cross-version: its own version's form)
    check_stream(source, destination)
    if destination.blockers.unmigratable:
        return load_failure(vn, state_blocked(destination.blockers.unmigratable[0]))
    # qemu_loadvm_state_header: the configuration section (machine type, validated caps) comes first.
    configuration = configuration_error(source, destination)
    if configuration is not None:
        return configuration
    if _mib(source.memory) != _mib(destination.memory):
        return load_failure(vn, RAM_LOAD_ERROR)
    # A live "vfio" section starts right after RAM's setup, before any device's non-iterable state.
    vfio = unloaded_section(source, destination)
    if vfio is not None:
        return load_failure(vn, unknown_section(vfio))
    missing = _missing_device(source, destination)
    if missing is not None:
        return missing
    return missing_vdagent(source, destination)


def _missing_device(source: Machine, destination: Machine) -> str | None:
    """The first source device (realize order, the order of its vmstate sections) the destination lacks:
    qemu_loadvm_section_start_full's "Unknown section or instance '<qdev path>/<vmsd name>' 0"."""
    remaining = [d.driver for d in destination.devices]
    for device, path in zip(source.devices, pci_paths(source.devices, source.machine_type), strict=True):
        if device.driver in remaining:
            remaining.remove(device.driver)
            continue
        if destination.vn < N10_2:
            return DESTINATION_LOAD_FAILURE
        name = catalog.SECTION_NAMES.get(device.driver)
        if name is None or path is None:
            raise NotModelled(f"the vmstate section name of -device {device.driver}")
        return load_failure(destination.vn, unknown_section(f"{path}/{name}"))
    return None


def missing_vdagent(source: Machine, destination: Machine) -> str | None:
    """vdagent_chr_init (ui/vdagent.c, 10.1+: "ui/vdagent: add migration support") registers section "vdagent"
    with vmstate_register_any, so the n-th qemu-vdagent chardev's state is instance n - 1. A destination with
    fewer of them finds no handler for the next instance (qemu_loadvm_section_start_full). The section is
    registered when the chardev is created, after the devices of the command line for a chardev-add: its state
    is sent with the non-iterable device states at the end (measured on 10.2.2, blocker-chardev-add-idle over
    tcp: the source completed, then the destination exited 1)."""
    if source.vn < N10_1:
        return None
    count = sum(1 for backend in source.chardevs.values() if backend == "qemu-vdagent")
    # A destination before 10.1 registers no vdagent section (cross-version; measured 10.2.2 -> 7.2.22 over exec).
    present = 0
    if destination.vn >= N10_1:
        present = sum(1 for backend in destination.chardevs.values() if backend == "qemu-vdagent")
    if count <= present:
        return None
    return load_failure(destination.vn, unknown_section(VDAGENT_SECTION, present))


def _mib(size: str) -> float | None:
    """-m SIZE in MiB, None for a size the parser does not read (two such sizes are taken as equal)."""
    try:
        return parse_mib(size)
    except ValueError:
        return None


def configuration_error(source: Machine, destination: Machine) -> str | None:
    """The destination's last line when the configuration section fails (reference_impl.cross.configuration_cause
    says why; that error_report line comes first). 10.2 appends vmstate_load_state's post_load text (measured on
    10.2.2 from 7.2.22 and 10.0.2); an unknown capability fails in the field's get, before post_load: only a
    destination older than 9.0 meets one."""
    cause = configuration_cause(source, destination)
    if cause is None:
        return None
    if destination.vn < N10_2:
        return DESTINATION_LOAD_FAILURE
    if cause.startswith("Received unknown capability"):
        raise NotModelled("a capability the 10.2 destination does not know")
    return load_failure(destination.vn, CONFIGURATION_POST_LOAD)


def ram_section_footer(source: Machine) -> str:
    """check_section_footer's text for a stream cut inside RAM's section: the id is the source's numbering
    (register_savevm_live: global_section_id++). migration_object_init registers "block" (blk_mig_init) right
    before "ram" until block migration went away in 9.1: RAM is section 2 from 7.2.22, 1 from 10.0.2 and
    10.2.2 (measured: a cancel over tcp into a 10.2.2 destination). Sections registered before
    migration_object_init come first: a command-line qemu-vdagent chardev's (10.1+, vdagent_chr_init: early
    backends are created before it in qemu_init) makes RAM section 2 on 10.2.2, removed or not (measured)."""
    ram = (1 if source.vn >= N9_1 else 2) + source.early_sections
    return f"Section footer error, section_id: {ram}"
