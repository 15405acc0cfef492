"""Raw ``qmp`` steps that steer a running migration by hand: migrate-pause, migrate-recover, migrate-continue.

Each function mirrors its QMP handler in migration/migration.c (7.2 and 10.0 read side by side) and returns
QEMU's error text or None. What real QEMU did where the source reading left a choice is in
docs/real-qemu-facts.md, "QMP breadth" (measured on 7.2.22 and 10.0.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reference_impl.capabilities import N8_2, N9_1, N10_2
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.migration import migrate_continue as release_pre_switchover
from reference_impl.migration_state import Scene


def _pause_refusal(vm: Machine) -> str:
    """qmp_migrate_pause outside postcopy: 8.2 added postcopy-recover to the text (read in 8.1.0 and 8.2.0)."""
    if vm.vn >= N8_2:
        return "migrate-pause is currently only supported during postcopy-active or postcopy-recover state"
    return "migrate-pause is currently only supported during postcopy-active state"


def _postcopy_running(scene: Scene) -> bool:
    """The source switched to postcopy (start-postcopy accepted while precopy ran) and has not ended."""
    m = scene.source.migration
    return m is not None and m.postcopy and m.failure is None


def migrate_pause(scene: Scene, vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate_pause``: only the source's postcopy-active (8.2+: migration_postcopy_is_alive, which
    adds postcopy-recover), then the destination's, can be paused; anything else is refused with the
    version's text.

    A postcopy-active source is not modelled: qemu_file_shutdown sends the source to postcopy-paused (it stays
    in finish-migrate), but the destination's end depends on how far it got (measured on both versions,
    docs/real-qemu-facts.md "QMP breadth"): still LISTENING (loading the device state) it fails its load and
    exits 1, already RUNNING it goes postcopy-paused with its main loop blocked on a page fault (QMP no longer
    answers). Which one comes first is scheduling, and so is the destination's last stderr line.
    """
    if _postcopy_running(scene):
        raise NotModelled(f"migrate-pause on the {vm.role} during postcopy")
    return _pause_refusal(vm)


def migrate_recover(scene: Scene, vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate_recover``: the incoming side must be postcopy-paused (same text in 7.2 and 10.0); a
    source's incoming state is none. The model never has a destination in postcopy-paused (migrate_pause does
    not model the pause), so only the refusal is modelled."""
    if "uri" not in arguments:
        raise NotModelled("migrate-recover without 'uri'")
    if vm is scene.destination and _postcopy_running(scene):
        raise NotModelled("migrate-recover on a destination in postcopy")
    return "Migrate recover can only be run when postcopy is paused."


# MigrationStatus (qapi/migration.json): the values the QAPI input visitor takes for migrate-continue's state.
_STATUSES = (
    "none",
    "setup",
    "cancelling",
    "cancelled",
    "active",
    "postcopy-active",
    "postcopy-paused",
    "postcopy-recover",
    "completed",
    "failed",
    "colo",
    "pre-switchover",
    "device",
    "wait-unplug",
)


def _status_names(vm: Machine) -> tuple[str, ...]:
    """postcopy-recover-setup is 9.1+, postcopy-device 10.2+ (their "since" in 10.2.2's qapi/migration.json)."""
    extra = (("postcopy-recover-setup",) if vm.vn >= N9_1 else ()) + (("postcopy-device",) if vm.vn >= N10_2 else ())
    return _STATUSES + extra


def migrate_continue(scene: Scene, vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate_continue(state)``: the outgoing status must be the one named ("Migration not in expected
    state: <status>", same text in 7.2 and 10.0); then it posts pause_sem. Out of pre-switchover that releases
    the migration (migration.migrate_continue); in the state it names otherwise, the post has no effect the
    model can see unless pause-before-switchover will wait on the semaphore later (not modelled)."""
    state = arguments.get("state")
    if not isinstance(state, str):
        raise NotModelled("migrate-continue without a 'state' string")
    if state not in _status_names(vm):
        # The visitor refuses a value outside the enum before qmp_migrate_continue runs (measured: 'parked' on
        # 7.2.22, 10.0.2, 10.2.2).
        return f"Parameter 'state' does not accept value '{state}'"
    if vm.status != state:
        return f"Migration not in expected state: {vm.status}"
    if state == "pre-switchover":
        return release_pre_switchover(vm)
    if "pause-before-switchover" in vm.caps:
        raise NotModelled(f"migrate-continue state={state} with pause-before-switchover")
    return None


# Arguments each handler reads (the others are NotModelled by qmp_commands._check_arguments).
ARGUMENTS: dict[str, frozenset[str]] = {
    "migrate-pause": frozenset(),
    "migrate-recover": frozenset({"uri"}),
    "migrate-continue": frozenset({"state"}),
}
HANDLERS = {
    "migrate-pause": migrate_pause,
    "migrate-recover": migrate_recover,
    "migrate-continue": migrate_continue,
}
