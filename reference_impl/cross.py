"""Migration between two QEMU versions: the rules that only show when the source and destination differ.

Each VM is realized with its own profile (reference_impl.machine.realize), so everything one side does alone
already follows that side's version: the capabilities and parameters it knows (``migrate-set-capabilities``
of ``switchover-ack`` on 7.2: "Parameter 'capability' does not accept value ..."), the devices it has, its
``migrate-incoming`` transports. What this module adds is what the two versions meet on:

- the machine type: ``-machine NAME`` a version lacks refuses the start (:func:`machine_error`, select_machine
  in softmmu/vl.c 7.2 / system/vl.c 10.x), and ``q35``/``pc`` are aliases of the version's newest type;
- the configuration section, the first thing of every stream (qemu_loadvm_state_header, then
  configuration_post_load in migration/savevm.c, same code in 7.2, 10.0.2 and 10.2.2): the machine type the
  source sends must match the destination's, and the capabilities should_validate_capability names
  (x-ignore-shared; mapped-ram from 9.0) must be set alike (:func:`configuration_error`);
- the device sections the destination cannot load (the vdagent section, 10.1+: reference_impl.loadvm);
- what the model cannot say for a pair (:func:`check_pair`, :func:`check_quirk`): VFIO devices, quirks whose
  outcome depends on the destination's version and was measured only for one version.

The configuration rules hold for one version too (two machine types on one version fail alike), so they run
for every pair; same-version scenarios that set both sides alike never reach them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from contract.scenario import DeviceSpec, VmSpec
from contract.versions import V7_2, V9_0, V10_0, V10_2, Version
from reference_impl import catalog
from reference_impl.limits import NotModelled

if TYPE_CHECKING:
    from reference_impl.machine import Machine
    from reference_impl.quirks import EndsWait


def supported(source: Version, destination: Version) -> bool:
    """Every pair of profiles is predicted; what a pair cannot be is NotModelled where it shows."""
    del source, destination
    return True


# --- machine types (select_machine, find_machine) ---

# QEMU releases that added a versioned x86 machine type, oldest first; pc-q35-4.0.1 is q35 only.
_RELEASES = (
    "1.4", "1.5", "1.6", "1.7", "2.0", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9", "2.10",
    "2.11", "2.12", "3.0", "3.1", "4.0", "4.0.1", "4.1", "4.2", "5.0", "5.1", "5.2", "6.0", "6.1", "6.2", "7.0",
    "7.1", "7.2", "8.0", "8.1", "8.2", "9.0", "9.1", "9.2", "10.0", "10.1", "10.2",
)  # fmt: skip
# The oldest versioned type per family, measured (`-machine help`) on 7.2.22, 10.0.2 and 10.2.2: 10.0 removed
# pc-i440fx-1.4 ... 2.3, 10.2 everything before 5.0 (deprecated machines "more than 6 years old").
_OLDEST: dict[Version, dict[str, tuple[int, ...]]] = {
    V7_2: {"pc-q35": (2, 4), "pc-i440fx": (1, 4)},
    V10_0: {"pc-q35": (2, 4), "pc-i440fx": (2, 4)},
    V10_2: {"pc-q35": (5, 0), "pc-i440fx": (5, 0)},
}
# Every profile from 7.2 to 10.2 has the types 5.0 and newer (7.2 and 10.2 have them; a type is never re-added).
_ALWAYS_FROM = (5, 0)
_UNVERSIONED = frozenset({"microvm", "isapc", "none", "x-remote"})
_ALIASES = {"q35": "pc-q35", "pc": "pc-i440fx"}
# send-configuration is off for pc-*-2.3 and older (hw_compat_2_3): no configuration section.
_SENDS_CONFIGURATION_FROM = (2, 4)


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def machine_name(spec: VmSpec) -> str:
    """The machine type ``-machine`` asks for: its first item, or ``type=`` (QemuOpts with an implied key)."""
    name = spec.machine.split(",")[0]
    for item in spec.machine.split(","):
        if item.startswith("type="):
            name = item[len("type=") :]
    return name


@functools.lru_cache(maxsize=256)
def resolve_machine(name: str, version: Version) -> str | None:
    """The machine class name ``name`` selects on ``version`` (find_machine: an alias gives the newest type,
    ``MachineClass->name`` is what the configuration section carries), or None when the version has no such
    type. Raises NotModelled for an old type on a profile whose oldest types were not measured."""
    if name in _ALIASES:
        return f"{_ALIASES[name]}-{version.major}.{version.minor}"
    if name in _UNVERSIONED:
        return name
    family, sep, release = name.rpartition("-")
    if not sep or family not in ("pc-q35", "pc-i440fx") or release not in _RELEASES:
        return None
    if release == "4.0.1" and family != "pc-q35":
        return None
    number = _numbers(release)
    if number > (version.major, version.minor):
        return None
    oldest = _OLDEST.get(version)
    if oldest is None:
        if number < _ALWAYS_FROM:
            raise NotModelled(f"machine type '{name}' on QEMU {version.short} (its oldest types were not measured)")
        return name
    if number < oldest[family]:
        return None
    if release == "4.0.1" and version >= V10_2:
        return None
    return name


def machine_error(spec: VmSpec, version: Version) -> str | None:
    """QEMU's startup refusal of ``-machine`` (select_machine), or None.

    7.2.22: "unsupported machine type" (softmmu/vl.c, then the hint line "Use -machine help ..."); 10.0.2 and
    10.2.2 name it: 'unsupported machine type: "pc-q35-10.0"' (system/vl.c). Measured on the three; the text
    changed between 7.2 and 10.0 in a release not read here, so 8.0 to 9.2 are not modelled.
    """
    if spec.machine == "q35":
        return None
    name = machine_name(spec)
    if resolve_machine(name, version) is not None:
        return None
    if version <= V7_2:
        return "unsupported machine type"
    if version >= V10_0:
        return f'unsupported machine type: "{name}"'
    raise NotModelled(f"the startup error of an unknown machine type on QEMU {version.short}")


def machine_type(spec: VmSpec, version: Version, devices: tuple[DeviceSpec, ...]) -> str:
    """The resolved machine type of a VM that started (machine_error said None).

    The device model (reference_impl.machine: pcie.0, q35's slots and qdev paths) is q35's: a PCI device on
    another machine family is not modelled."""
    resolved = resolve_machine(machine_name(spec), version)
    assert resolved is not None
    if not resolved.startswith("pc-q35-") and any(catalog.is_pci_driver(d.driver) for d in devices):
        raise NotModelled(f"PCI devices on machine type '{resolved}'")
    return resolved


# --- the configuration section (vmstate_configuration, migration/savevm.c) ---

# 10.2's vmstate_load_state wraps a failing post_load (version_id 1, no minimum_version_id).
CONFIGURATION_POST_LOAD = "post load hook failed for: configuration, version_id: 1, minimum_version: 0, ret: -22"


def validated_capabilities(version: Version) -> frozenset[str]:
    """should_validate_capability: x-ignore-shared (7.2 on), mapped-ram (9.0 on, where it exists)."""
    return frozenset({"x-ignore-shared", "mapped-ram"}) if version >= V9_0 else frozenset({"x-ignore-shared"})


def configuration_cause(source: Machine, destination: Machine) -> str | None:
    """Why the destination refuses the configuration section, as QEMU's error_report says it (that line comes
    before the last one), or None. In configuration_post_load's order: the machine type (strncmp over the
    received length), then the validated capabilities; get_capability refuses a name the destination's enum
    lacks while the section is read, before post_load."""
    src_type, dst_type = source.machine_type, destination.machine_type
    for resolved in (src_type, dst_type):
        release = resolved.rpartition("-")[2]
        if resolved.startswith("pc-") and _numbers(release) < _SENDS_CONFIGURATION_FROM:
            raise NotModelled(f"machine type '{resolved}' (no configuration section, hw_compat_2_3)")
    sent = source.caps & validated_capabilities(source.version)
    from reference_impl.capabilities import capability_names

    known = set(capability_names(destination.version))
    for cap in sorted(sent):
        if cap not in known:
            return f"Received unknown capability {cap}"
    if dst_type[: len(src_type)] != src_type:
        return f"Machine type received is '{src_type}' and local is '{dst_type}'"
    for cap in sorted(validated_capabilities(destination.version)):
        if (cap in sent) != (cap in destination.caps):
            local = "on" if cap in destination.caps else "off"
            return f"Capability {cap} is {local}, but received capability is {'on' if cap in sent else 'off'}"
    return None


def configuration_error(source: Machine, destination: Machine) -> str | None:
    """The destination's last stderr line when the configuration section fails (it then exits 1), or None.

    Up to 10.1 process_incoming_migration_co prints only "load of migration failed: Invalid argument" (the
    cause is an earlier error_report line); 10.2 appends vmstate_load_state's post_load text (measured on
    10.2.2: the machine type mismatch from 7.2.22 and 10.0.2). An unknown capability fails in the field's get
    (no post_load): only a destination older than 9.0 meets one.
    """
    cause = configuration_cause(source, destination)
    if cause is None:
        return None
    from reference_impl.loadvm import DESTINATION_LOAD_FAILURE, load_failure

    if destination.version < V10_2:
        return DESTINATION_LOAD_FAILURE
    if cause.startswith("Received unknown capability"):
        raise NotModelled("a capability the 10.2 destination does not know")
    return load_failure(destination.vn, CONFIGURATION_POST_LOAD)


# --- what a pair of versions is not modelled for ---

# Quirks (reference_impl.quirks) whose outcome the source alone decides (its migration thread, its return path
# over a one-way channel): they hold whatever the destination's version. The others depend on how the
# destination reads the stream and were measured on one version each.
SOURCE_SIDE_QUIRKS = frozenset(
    {
        "pause-before-switchover-stays-parked",
        "pause-before-switchover-parks",
        "file-return-path-read-fails",
        "file-return-path-read-fails-in-device",
        "file-switchover-ack-waits",
        "exec-return-path-waits",
        "exec-return-path-waits-in-device",
    }
)


def crosses(source: Machine, destination: Machine) -> bool:
    return source.vn != destination.vn


def check_pair(source: Machine, destination: Machine) -> None:
    """Raise NotModelled for what the model does not follow across two versions, before any step runs.

    VFIO: the device state protocol changed under the same section ("vfio"): 7.2 speaks the v1 migration
    region protocol (hw/vfio/migration.c, VFIO_REGION_TYPE_MIGRATION_DEPRECATED), 8.0 on the v2 uAPI
    (VFIO_DEVICE_FEATURE_MIGRATION); the stream carries the vendor driver's data, so whether one loads the
    other's is the device's business, not QEMU's: not predicted."""
    if not crosses(source, destination):
        return
    if any(d.driver == "vfio-pci" for d in (*source.devices, *destination.devices)):
        raise NotModelled(f"vfio-pci across QEMU versions ({source.version.short} -> {destination.version.short})")


def check_quirk(quirk_id: str, source: Machine, destination: Machine) -> None:
    """A quirk that applies to a cross-version migration: kept when the source alone decides it."""
    if crosses(source, destination) and quirk_id not in SOURCE_SIDE_QUIRKS:
        raise NotModelled(f"quirk '{quirk_id}' with a {destination.version.short} destination")


def socket_stream(source: Machine, destination: Machine, running: bool) -> EndsWait | None:
    """What a tcp/unix stream to a destination configured unlike its source does, checked when the wait starts:
    the wait's end (an :class:`EndsWait`) where QEMU's answer is known, NotModelled where it is a race.

    - A configuration section the destination refuses (:func:`configuration_cause`): it exits at once, and the
      source fails on its next write with a text the kernel's timing picks (20 runs of q35 on 5 pairs of
      7.2.22, 10.0.2 and 10.2.2: "Unable to write to socket: Broken pipe" 7 times, "... Connection reset by
      peer" 13 times, both on 4 of the pairs). Over file:/exec: the source completes first (modelled).
    - multifd on one side only: the source's channels reach a destination that takes the first connection as
      its main stream (socket_accept_incoming_migration: "Extra incoming migration connection; ignoring", then
      "Not a migration stream" or not, as the connections race); a destination alone with multifd waits for
      channels that never come (measured: 10.0.2 stays in setup, 7.2.22 in none, the source completed).
    - postcopy-ram on the source only: loadvm_postcopy_handle_advise refuses "RAM postcopy is disabled but have
      16 byte advise" and the destination exits 1; the source's error differs per version (10.0.2 "Sibling
      indicated error 1", 7.2.22 "Unable to write to socket: Bad file descriptor", 10.2.2 "Channel error:
      Input/output error", one run each): not modelled until measured stable. (postcopy-ram on the
      destination only changes nothing: it completes, measured on the three.)
    - switchover-ack on the source, not on the destination (7.2 has none): loadvm_process_command sends the
      ack at MIG_CMD_OPEN_RETURN_PATH only when the destination has the capability, so migration_can_switchover
      stays false while the source runs: both sides stay active until the wait's bound (measured on 10.0.2 ->
      10.0.2 and 10.2.2 -> 7.2.22). A stopped source switches over without it.
    """
    if configuration_cause(source, destination) is not None:
        raise NotModelled("the source's error when the destination refuses the configuration section over tcp/unix")
    if ("multifd" in source.caps) != ("multifd" in destination.caps):
        raise NotModelled("multifd on one side of a tcp/unix migration only")
    if "postcopy-ram" in source.caps and "postcopy-ram" not in destination.caps:
        raise NotModelled("postcopy-ram on the source of a tcp/unix migration only")
    if "switchover-ack" in source.caps and "switchover-ack" not in destination.caps and running:
        from reference_impl.quirks import EndsWait

        return EndsWait(destination=("active",), timeout=True, last_seen="active")
    return None


def ram_section_footer(source: Machine) -> str:
    """check_section_footer's text for a stream cut inside RAM's section: the id is the source's numbering
    (register_savevm_live gives each entry global_section_id++). migration_object_init registers "block"
    (blk_mig_init) right before "ram" until block migration went away in 9.1: RAM is section 2 from 7.2.22,
    1 from 10.0.2 and 10.2.2 (measured: a cancel over tcp into a 10.2.2 destination)."""
    from reference_impl.capabilities import N9_1
    from reference_impl.loadvm import SECTION_FOOTER_ERROR

    return SECTION_FOOTER_ERROR if source.vn >= N9_1 else "Section footer error, section_id: 2"
