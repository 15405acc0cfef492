"""Migration between two QEMU versions: the rules that only show when the source and destination differ.

Each VM is realized with its own profile (reference_impl.machine.realize), so everything one side does alone
already follows that side's version: the capabilities and parameters it knows (``migrate-set-capabilities``
of ``switchover-ack`` on 7.2: "Parameter 'capability' does not accept value ..."), the devices it has, its
``migrate-incoming`` transports. What this module adds is what the two versions meet on:

- the machine type: ``-machine NAME`` a version lacks refuses the start, and ``q35``/``pc`` are aliases of
  the version's newest type (reference_impl.machine_types);
- the configuration section, the first thing of every stream (qemu_loadvm_state_header, then
  configuration_post_load in migration/savevm.c, same code in 7.2, 10.0.2 and 10.2.2): the machine type the
  source sends must match the destination's, and the capabilities should_validate_capability names
  (x-ignore-shared; mapped-ram from 9.0) must be set alike (:func:`configuration_cause`; the destination's
  line: reference_impl.loadvm.configuration_error);
- the device sections the destination cannot load (the vdagent section, 10.1+: reference_impl.loadvm);
- the "vfio" sections of VFIO devices (reference_impl.cross_vfio: a 7.2 side never registers one);
- what the model cannot say for a pair (:func:`check_pair`, :func:`check_quirk`): a "vfio" section both sides
  would handle where QEMU does not decide whether it loads, quirks whose outcome depends on the destination's
  version and was measured only for one version.

The configuration rules hold for one version too (two machine types on one version fail alike), so they run
for every pair; same-version scenarios that set both sides alike never reach them.
"""

from __future__ import annotations

from contract.versions import V9_0, Version
from reference_impl import cross_vfio
from reference_impl.capabilities import N8_1, N10_1, capability_names
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.machine_types import SENDS_CONFIGURATION_FROM, release_numbers


def supported(source: Version, destination: Version) -> bool:
    """Every pair of profiles is predicted; what a pair cannot be is NotModelled where it shows."""
    del source, destination
    return True


# --- the configuration section (vmstate_configuration, migration/savevm.c) ---


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
        if resolved.startswith("pc-") and release_numbers(release) < SENDS_CONFIGURATION_FROM:
            raise NotModelled(f"machine type '{resolved}' (no configuration section, hw_compat_2_3)")
    sent = source.caps & validated_capabilities(source.version)
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

    VFIO (reference_impl.cross_vfio): each side's gating follows its own version; what is not modelled is a
    "vfio" section both sides would handle where QEMU does not decide whether it loads (a v1 side, versions
    before 10.0, another kernel driver, multifd)."""
    if not crosses(source, destination):
        return
    cross_vfio.check_pair(source, destination)


def check_quirk(quirk_id: str, source: Machine, destination: Machine) -> None:
    """A quirk that applies to a cross-version migration: kept when the source alone decides it."""
    if crosses(source, destination) and quirk_id not in SOURCE_SIDE_QUIRKS:
        raise NotModelled(f"quirk '{quirk_id}' with a {destination.version.short} destination")


def check_stream_races(source: Machine, destination: Machine) -> None:
    """The outcomes of a tcp/unix stream to a destination configured unlike its source that are races
    (NotModelled), checked when the wait starts, before :func:`ack_never_comes`.

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
    - a "vfio" section the destination has no handler for (a 7.2 destination, reference_impl.cross_vfio): the
      destination exits at the section's start, right after RAM's setup, while the source still sends RAM, so
      the source's error is the same race as for the configuration section (over exec: modelled,
      reference_impl.loadvm.config_mismatch).
    - a vdagent section (10.1+) into a destination before 10.1: a command-line chardev registers it before the
      machine's devices, so the source still writes their sections when the destination exits; the source
      completed 5 times and failed once ("Unable to write to socket: Broken pipe") in 6 runs of 10.2.2 ->
      10.0.2 (over exec it always completes, modelled by reference_impl.loadvm.missing_vdagent).
    """
    if configuration_cause(source, destination) is not None:
        raise NotModelled("the source's error when the destination refuses the configuration section over tcp/unix")
    if "multifd" in source.caps and "multifd" not in destination.caps:
        raise NotModelled("multifd on one side of a tcp/unix migration only (the source)")
    if "multifd" in destination.caps and "multifd" not in source.caps and destination.vn >= N8_1:
        # 8.1+ refuses multifd once incoming started, so the destination had it from the start. A 7.2
        # destination may have turned it on mid-stream, which leaves the negotiated migration as it was
        # (reference_impl.migration.set_capabilities; real 7.2 crashes there, a known QEMU bug).
        raise NotModelled("multifd on one side of a tcp/unix migration only (the destination)")
    if "postcopy-ram" in source.caps and "postcopy-ram" not in destination.caps:
        raise NotModelled("postcopy-ram on the source of a tcp/unix migration only")
    if cross_vfio.unloaded_section(source, destination) is not None:
        raise NotModelled("a vfio section the destination does not load, over tcp/unix")
    cross_vfio.check_stream(source, destination)
    # The same race between two 10.2.2 (a chardev-add'ed vdagent, the destination without one): the source
    # failed with "Unable to write to socket: Broken pipe" in 1 of 3 runs (main job, 2026-12-03).
    loads_vdagent = destination.vn >= N10_1 and "qemu-vdagent" in destination.chardevs.values()
    if source.vn >= N10_1 and "qemu-vdagent" in source.chardevs.values() and not loads_vdagent:
        raise NotModelled("a vdagent section the destination does not load, over tcp/unix")


def ack_never_comes(source: Machine, destination: Machine, running: bool) -> bool:
    """True when the source of a tcp/unix stream waits for a switchover ack that never comes (the caller ends
    the wait at its bound): switchover-ack on the source, not on the destination (7.2 has none).
    loadvm_process_command sends the ack at MIG_CMD_OPEN_RETURN_PATH only when the destination has the
    capability, so migration_can_switchover stays false while the source runs: both sides stay active until the
    wait's bound (measured on 10.0.2 -> 10.0.2 and 10.2.2 -> 7.2.22). A stopped source switches over without it.
    """
    return "switchover-ack" in source.caps and "switchover-ack" not in destination.caps and running
