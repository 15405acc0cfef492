"""Divergences expected because real QEMU is wrong, each tied to a documented QEMU bug (docs/qemu-bugs.md).

The model predicts what QEMU means to do (reference_impl/); a QEMU bug the suite reaches is an entry here, with
the bug's *signature*: the scenario(s), the QEMU versions and accelerators it was seen on, and the values the
bug produces (not only which fields differ). The runner marks a comparison that matches its entry's signature as
a *known QEMU bug* (``Comparison.known_bug``): reported (console, JSON, JUnit, HTML) but not failing
``migconform run``/``conformance``, so a CI matrix goes red only for something new.

An entry does not hide a failure:
- a divergence of that case that does not match the signature (another field, or the same field with a value
  the bug does not produce, e.g. a destination that cannot load the stream at all where the bug is lost dirty
  pages) is a plain divergence;
- a case whose entry applies but that now *agrees* is reported as "known bug no longer reproduces"
  (``Comparison.known_bug_gone``). That does not fail ``migconform run`` (the QEMU under test is right, and a
  release that fixes the bug must show the fix rather than a failure), but every report prints it prominently,
  and the pytest conformance test (tests/conformance/test_suite.py) fails so that the stale entry is removed;
- except for an *intermittent* entry (a race inside QEMU that shows in some runs only): its agreeing runs are
  plain agreements, and a run that shows the bug must still match the signature.
"""

from __future__ import annotations

from collections.abc import Mapping

from contract.scenario import Scenario, expand_steps, migrate_transport
from contract.versions import Version
from harness.compare import Comparison
from harness.known_bug_signature import KnownDivergence, Shape, Value, equals, matches, one_of

__all__ = ["KNOWN_DIVERGENCES", "KnownDivergence", "Shape", "Value", "classify", "known_divergence"]


# The 7.2 dirty-page bug, seen two ways (docs/qemu-bugs.md "4."):
# - the destination's guest answers but holds stale pages;
# - the guest panics on a lost kernel page: either it stops answering while its QEMU still runs, or the panic
#   ends its QEMU (-no-reboot, panic=-1: a guest reset is a clean exit, status 0) before the executor reads the
#   final states, so the destination is gone and the verdict failed. A destination that cannot load the stream
#   (exit status 1, "load of migration failed: ...", destination status failed) is another failure, not this bug.
_GUEST_LOST_PAGES = Value(
    "a live guest with bad_pages > 0, or a dead guest",
    lambda guest: (guest["alive"] is True and int(guest["bad_pages"]) > 0) or guest["alive"] is False,
)
_GUEST_DIED = Value("a dead guest", lambda guest: guest["alive"] is False)
# A guest that panicked may end its QEMU (-no-reboot, panic=-1: a clean exit) before the final read.
_GUEST_DIED_ALSO: dict[str, Value] = {
    "verdict": equals("failed"),
    "stage": equals("migration"),
    "error": matches(r"^destination QEMU exited with status 0: "),
    "destination.status": equals(None),
    "destination.runstate": equals(None),
}
_DESTINATION_GONE = equals(None)


def _capabilities_by_side(scenario: Scenario) -> tuple[set[str], set[str]]:
    """The capabilities the scenario's set-capabilities steps turn on, per side (ignoring refusals)."""
    source: set[str] = set()
    destination: set[str] = set()
    for step in expand_steps(scenario):
        if step.action != "set-capabilities":
            continue
        for side, caps in (("source", source), ("destination", destination)):
            if step.side in (side, "both"):
                caps.update(name for name, on in step.capabilities.items() if on)
                caps.difference_update(name for name, on in step.capabilities.items() if not on)
    return source, destination


def _socket_migrate(scenario: Scenario) -> bool:
    return any(s.action == "migrate" and (s.transport or "tcp") in ("tcp", "unix") for s in expand_steps(scenario))


def _postcopy_with_multifd(scenario: Scenario) -> bool:
    """Both sides have postcopy-ram and multifd (not postcopy-preempt: another bug comes first) and the
    scenario switches to postcopy over a socket."""
    source, destination = _capabilities_by_side(scenario)
    wanted = {"postcopy-ram", "multifd"}
    steps = expand_steps(scenario)
    return (
        wanted <= source
        and wanted <= destination
        and "postcopy-preempt" not in source
        and any(s.action == "start-postcopy" for s in steps)
        and _socket_migrate(scenario)
    )


def _postcopy_preempt_with_multifd(scenario: Scenario) -> bool:
    """Both sides have multifd and postcopy-preempt (with postcopy-ram) and the scenario switches to postcopy
    over a socket (the only way it was seen; the channel is opened at migrate, so precopy may show it too)."""
    source, destination = _capabilities_by_side(scenario)
    wanted = {"postcopy-ram", "postcopy-preempt", "multifd"}
    return (
        wanted <= source
        and wanted <= destination
        and any(s.action == "start-postcopy" for s in expand_steps(scenario))
        and _socket_migrate(scenario)
    )


def _multifd_on_live_destination(scenario: Scenario) -> bool:
    """The destination turns multifd on after the source's migrate, and a wait lets the stream go on."""
    steps = expand_steps(scenario)
    migrate = next((i for i, s in enumerate(steps) if s.action == "migrate"), None)
    if migrate is None or not _socket_migrate(scenario):
        return False
    for i, step in enumerate(steps[migrate + 1 :], start=migrate + 1):
        if (
            step.action == "set-capabilities"
            and step.side in ("destination", "both")
            and step.capabilities.get("multifd")
        ):
            return any(s.action == "wait" for s in steps[i + 1 :])
    return False


def _mapped_ram_ignore_shared_file(scenario: Scenario) -> bool:
    """The source writes a file with mapped-ram and x-ignore-shared (precopy or background snapshot)."""
    source, _destination = _capabilities_by_side(scenario)
    to_file = any(s.action == "migrate" and s.transport == "file" for s in expand_steps(scenario))
    return {"mapped-ram", "x-ignore-shared"} <= source and to_file


def _removed_vdagent_then_migrate(scenario: Scenario) -> bool:
    """A qemu-vdagent chardev is added and removed (chardev-add, chardev-remove) on the source, then it migrates."""
    added: set[str] = set()
    removed = False
    for step in expand_steps(scenario):
        if step.action == "qmp" and step.side in ("source", "both"):
            backend = step.arguments.get("backend")
            vdagent = isinstance(backend, Mapping) and backend.get("type") == "qemu-vdagent"
            if step.command == "chardev-add" and vdagent:
                added.add(str(step.arguments.get("id")))
            elif step.command == "chardev-remove" and str(step.arguments.get("id")) in added:
                removed = True
        elif step.action == "migrate" and removed:
            return True
    return False


def _background_snapshot_from_prelaunch(scenario: Scenario, transports: frozenset[str]) -> bool:
    """A background snapshot over one of ``transports`` from a source started with -S that no step continues
    (cont) before it."""
    if "-S" not in scenario.source.args or "background-snapshot" not in _capabilities_by_side(scenario)[0]:
        return False
    for step in expand_steps(scenario):
        if step.action == "migrate":
            return migrate_transport(scenario, step) in transports
        if step.action == "qmp" and step.command == "cont" and step.side in ("source", "both"):
            return False
    return False


_YANK_ABORT = matches(
    r"^destination QEMU exited with status -6: .*yank_unregister_instance: "
    r"Assertion `QLIST_EMPTY\(&entry->yankfns\)' failed"
)
_SOURCE_EVENTS_COMPLETED = Value(
    "the source's events end in completed", lambda events: list(events["source"])[-1] == "completed"
)
_SOURCE_EVENTS_STUCK = Value(
    "the source's events end in active or postcopy-active",
    lambda events: list(events["source"])[-1] in ("active", "postcopy-active"),
)
_VDAGENT_SAVE_ABORT = matches(
    r"^source QEMU exited with status -6: .*vmstate_save_state_v: "
    r"Assertion `first_elem \|\| !n_elems \|\| !size' failed"
)
# What else the abort changes: the failed verdict, both sides gone (the destination may still be reading).
_VDAGENT_SAVE_ABORT_ALSO: dict[str, Value] = {
    "verdict": equals("failed"),
    "stage": equals("migration"),
    "source.status": equals(None),
    "source.runstate": equals(None),
    "destination.status": one_of(_DESTINATION_GONE, equals("failed"), equals("active")),
    "destination.runstate": one_of(_DESTINATION_GONE, equals("inmigrate")),
    "events": Value("any events", lambda _events: True),
}
# qmp_migrate (10.0.2, 10.2.2) reads channelv[MAIN]->addr before its "no main entry" check: the source dies
# inside the migrate command (a read at address 8), the destination waits on untouched.
_NO_MAIN_CHANNEL_SEGV: dict[str, Value] = {
    "verdict": equals("failed"),
    "stage": equals("migration"),
    "source.status": equals(None),
    "source.runstate": equals(None),
}
# bg_migration_thread's vm_stop_force_state(RUN_STATE_PAUSED) on a prelaunch VM: runstate_set aborts before
# anything is written, so the destination never loads (it waits in inmigrate, or exec's reader saw nothing).
_PRELAUNCH_PAUSED_ABORT = matches(
    r"^source QEMU exited with status -6: invalid runstate transition: 'prelaunch' -> 'paused'$"
)
_PRELAUNCH_PAUSED_ABORT_ALSO: dict[str, Value] = {
    "verdict": equals("failed"),
    "stage": equals("migration"),
    "source.status": equals(None),
    "source.runstate": equals(None),
    "destination.status": one_of(equals("none"), equals("setup"), equals("failed"), _DESTINATION_GONE),
    "destination.runstate": one_of(equals("inmigrate"), _DESTINATION_GONE),
    "events": Value("any events", lambda _events: True),
}
# The intended end of a postcopy migration is known to the model; the bug changes only what comes after the
# source completed (or, with postcopy-preempt, keeps the source waiting for the destination that died).
_ANY_ACCEL = frozenset({"tcg", "kvm"})


def _prelaunch_snapshot_abort(
    suffix: str, scenario_id: str, transports: frozenset[str], versions: tuple[str, str]
) -> KnownDivergence:
    """docs/qemu-bugs.md section 14 over ``transports`` (its scenario, and any like it), seen on ``versions``."""
    return KnownDivergence(
        name="qemu-bgsnap-from-prelaunch-aborts" + suffix,
        scenarios=frozenset({scenario_id}),
        configuration=lambda scenario: _background_snapshot_from_prelaunch(scenario, transports),
        versions=(versions,),
        accels=_ANY_ACCEL,  # runstate_set's transition table, whatever the accelerator
        reason=(
            "QEMU's bg_migration_thread stops a VM that never ran with vm_stop_force_state(RUN_STATE_PAUSED): "
            "runstate_set has no prelaunch -> paused transition and aborts the source over "
            f"{'/'.join(sorted(transports))} (docs/qemu-bugs.md section 14)"
        ),
        shapes=(Shape(required={"error": _PRELAUNCH_PAUSED_ABORT}, optional=_PRELAUNCH_PAUSED_ABORT_ALSO),),
    )


KNOWN_DIVERGENCES: tuple[KnownDivergence, ...] = (
    KnownDivergence(
        name="qemu-7.2-tcg-precopy-loses-dirty-pages",
        scenarios=frozenset({"guest-precopy-tcp"}),
        versions=(("7.2", "7.2"),),
        accels=frozenset({"tcg"}),
        reason="QEMU 7.2 under TCG loses dirty pages in multi-pass precopy (docs/qemu-bugs.md section 4)",
        shapes=(
            Shape(required={"guest": _GUEST_LOST_PAGES}),
            Shape(required={"guest": _GUEST_DIED}, optional=_GUEST_DIED_ALSO),
        ),
    ),
    KnownDivergence(
        name="qemu-7.2-tcg-precopy-loses-dirty-pages-after-cancel",
        scenarios=frozenset({"guest-cancel-then-retry"}),
        versions=(("7.2", "7.2"),),
        accels=frozenset({"tcg"}),
        # The retry is a multi-pass precopy of a writing guest at 128 MiB/s, the same bug's conditions; it shows
        # in some runs only (main job 2026-12-03: the destination's guest dead once, after agreeing in earlier runs).
        intermittent=True,
        reason=(
            "QEMU 7.2 under TCG loses dirty pages in multi-pass precopy, here in the retry after a cancel; "
            "intermittent (docs/qemu-bugs.md section 4)"
        ),
        shapes=(
            Shape(required={"guest": _GUEST_LOST_PAGES}),
            Shape(required={"guest": _GUEST_DIED}, optional=_GUEST_DIED_ALSO),
        ),
    ),
    KnownDivergence(
        name="qemu-7.2-postcopy-multifd-yank-abort",
        scenarios=frozenset(),
        configuration=_postcopy_with_multifd,
        versions=(("7.2", "7.2"),),
        # The abort is in migration cleanup code, not in the accelerator (seen under TCG on this host).
        accels=_ANY_ACCEL,
        reason=(
            "QEMU 7.2 aborts the destination in yank_unregister_instance after a postcopy migration with multifd "
            "(docs/qemu-bugs.md section 5)"
        ),
        shapes=(
            # The source completed, the destination died in cleanup after it completed.
            Shape(
                required={"error": _YANK_ABORT},
                optional={
                    "verdict": equals("failed"),
                    "stage": equals("migration"),
                    "destination.status": _DESTINATION_GONE,
                    "destination.runstate": _DESTINATION_GONE,
                    "events": _SOURCE_EVENTS_COMPLETED,
                },
            ),
        ),
    ),
    KnownDivergence(
        name="qemu-7.2-multifd-preempt-channel-misrouted",
        scenarios=frozenset(),
        configuration=_postcopy_preempt_with_multifd,
        versions=(("7.2", "7.2"),),
        # migration_ioc_process_incoming's channel routing, not the accelerator (seen under TCG on this host).
        accels=_ANY_ACCEL,
        reason=(
            "QEMU 7.2 hands the postcopy-preempt channel to multifd (migration_ioc_process_incoming) when multifd "
            "is on: the destination dies and the source waits forever (docs/qemu-bugs.md section 7)"
        ),
        shapes=(
            # The destination is gone; the source, stopped for the switchover, waits until the executor's bound.
            Shape(
                required={
                    "error": matches(r"^timed out after .* \(last seen: (?:active|postcopy-active)\)$"),
                    "destination.status": _DESTINATION_GONE,
                },
                optional={
                    "verdict": equals("failed"),
                    "stage": equals("migration"),
                    "source.status": one_of(equals("active"), equals("postcopy-active")),
                    "source.runstate": equals("finish-migrate"),
                    "destination.runstate": _DESTINATION_GONE,
                    "events": _SOURCE_EVENTS_STUCK,
                },
            ),
        ),
    ),
    KnownDivergence(
        name="qemu-7.2-multifd-on-live-destination-segfault",
        scenarios=frozenset(),
        configuration=_multifd_on_live_destination,
        versions=(("7.2", "7.2"),),
        accels=_ANY_ACCEL,  # a NULL dereference in multifd_recv_sync_main, whatever the accelerator
        reason=(
            "QEMU 7.2 lets a destination turn multifd on while its stream flows and then dies with SIGSEGV in "
            "multifd_recv_sync_main (docs/qemu-bugs.md section 8)"
        ),
        shapes=(
            # The destination is gone; the source either failed writing to it or had already completed.
            Shape(
                required={
                    "destination.status": _DESTINATION_GONE,
                    "error": one_of(
                        matches(r"^Unable to write to socket: "),
                        matches(r"^destination QEMU exited with status -11: "),
                    ),
                },
                optional={
                    "verdict": equals("failed"),
                    "stage": equals("migration"),
                    "source.status": equals("failed"),
                    "source.runstate": equals("running"),
                    "destination.runstate": _DESTINATION_GONE,
                    "events": Value("any events", lambda _events: True),
                },
            ),
        ),
    ),
    KnownDivergence(
        name="qemu-10.0-mapped-ram-ignore-shared-load-fails",
        scenarios=frozenset(),
        configuration=_mapped_ram_ignore_shared_file,
        versions=(("10.0", "10.0"),),
        accels=_ANY_ACCEL,  # a stream-format mismatch in migration/ram.c, whatever the accelerator
        reason=(
            "QEMU 10.0 writes x-ignore-shared's GPA before the mapped-ram header but parse_ramblock does not read "
            "it: the destination cannot load the file (docs/qemu-bugs.md section 9)"
        ),
        shapes=(
            Shape(
                required={
                    "error": matches(
                        r"^destination QEMU exited with status 1: load of migration failed: Invalid argument$"
                    ),
                    "destination.status": _DESTINATION_GONE,
                },
                optional={
                    "verdict": equals("failed"),
                    "stage": equals("migration"),
                    "destination.runstate": _DESTINATION_GONE,
                    "events": _SOURCE_EVENTS_COMPLETED,
                },
            ),
        ),
    ),
    KnownDivergence(
        name="qemu-10.2-removed-vdagent-aborts-save",
        scenarios=frozenset({"blocker-chardev-remove-unblocks"}),
        configuration=_removed_vdagent_then_migrate,
        versions=(("10.2", "10.2"),),
        accels=_ANY_ACCEL,  # a use after free in ui/vdagent.c, whatever the accelerator
        reason=(
            "QEMU 10.2 keeps a removed qemu-vdagent chardev's vmstate section registered (vdagent_chr_fini has no "
            "vmstate_unregister): the source aborts saving it in vmstate_save_state_v (docs/qemu-bugs.md section 11)"
        ),
        shapes=(
            # The source dies when it saves the device states; the destination's stream then breaks.
            Shape(required={"error": _VDAGENT_SAVE_ABORT}, optional=_VDAGENT_SAVE_ABORT_ALSO),
        ),
    ),
    KnownDivergence(
        name="qemu-10-migrate-channels-no-main",
        scenarios=frozenset({"qmp-migrate-channels-cpr-only"}),
        versions=(("10.0", "10.2"),),
        accels=_ANY_ACCEL,  # a NULL read in qmp_migrate, before anything is sent
        reason=(
            "QEMU 10.x qmp_migrate reads channelv[MIGRATION_CHANNEL_TYPE_MAIN]->addr before checking that a main "
            "channel was given: migrate with only a cpr channel kills the source with SIGSEGV instead of refusing "
            "'Channel list has no main entry' (docs/qemu-bugs.md section 12)"
        ),
        shapes=(
            Shape(
                required={"error": matches(r"^source QEMU exited with status -11: ")},
                optional=_NO_MAIN_CHANNEL_SEGV,
            ),
        ),
    ),
    # One bug, two entries: 7.2 has no file: transport (its refusal agrees), so the file: case starts at 10.0.
    _prelaunch_snapshot_abort("", "core-bgsnap-prelaunch-exec", frozenset({"exec", "tcp", "unix"}), ("7.2", "10.2")),
    _prelaunch_snapshot_abort("-file", "core-bgsnap-prelaunch-file", frozenset({"file"}), ("10.0", "10.2")),
)


def known_divergence(scenario: Scenario | str, version: Version, accel: str | None = None) -> KnownDivergence | None:
    """The entry for this case, if the bug was seen there (``accel`` None: any accelerator)."""
    return next((k for k in KNOWN_DIVERGENCES if k.applies(scenario, version, accel)), None)


def classify(comparison: Comparison, scenario: Scenario | str, version: Version, accel: str | None) -> None:
    """Mark ``comparison`` as a known QEMU bug when it matches its entry's signature, or as one whose known
    bug no longer reproduces when that entry's case now agrees."""
    known = known_divergence(scenario, version, accel)
    if known is None:
        return
    if comparison.agree:
        if not known.intermittent:
            comparison.known_bug_gone = known.gone_message
    elif not known.problems(comparison):
        comparison.known_bug = known.reason
