"""``Outcome.vfio_states``: the VFIO_MIGRATION events a scenario makes QEMU send, per device.

QEMU sends ``VFIO_MIGRATION`` (9.1+) only for a device with ``migration-events=on`` whose
``vfio_migration_init`` succeeded (it has a ``VFIOMigration``: savevm handlers and VM-state handlers), once
per state change ``vfio_migration_set_device_state`` makes; ``device-id`` is the device's qdev id (an
unnamed device sends ``""``). The harness keys the destination's devices ``destination:<id>``
(harness/execution/record.py ``record_events``). Every other VFIO scenario makes QEMU send none, and the model says
so by predicting ``{}``.

:class:`VfioEvents` follows :func:`reference_impl.predict.predict` step by step and drives one
:class:`~reference_impl.vfio.sequences.VfioStateDriver` per such device from what each step did to the VM:

- QEMU start: ``vm_start`` in ``qmp_x_exit_preconfig`` runs the VM-state handlers before the main loop, so
  before any QMP client has negotiated capabilities (``monitor_qapi_event_emit`` skips monitors still in
  negotiation): the device's state changes, no event is seen.
- ``stop`` / ``cont`` (and any step that starts or stops the VM): ``vfio_vmstate_change_prepare`` and
  ``vfio_vmstate_change``.
- ``migrate`` accepted: ``vfio_save_setup`` (the executor waits until the migration left setup).
- ``wait`` on a completed precopy: the switchover stop (``migration_stop_vm``: VM-state handlers only for a
  running VM), ``vfio_save_complete_precopy``, ``vfio_save_cleanup``; on the destination ``vfio_load_setup``
  and, if ``process_incoming_migration_bh`` starts the VM, the VM-state handlers.

Rule for what the model does not follow (documented in docs/scenario-format.md): where a device with events
exists and the run takes a path the model has no device-state rule for (a migration that fails, is
cancelled, switches to postcopy, is a background snapshot, stays running at the end; a snapshot-save; a qmp
step that changes a run state; a VM that died), the model predicts no sequence at all: ``vfio_states`` is
null and ``extra["vfio_states_unpredicted"]`` says why, and the comparison leaves the field out for that item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from contract.scenario import Scenario, Step, VmSpec
from contract.versions import V9_1
from reference_impl.vfio.api import placeholder_name
from reference_impl.vfio.handlers import VfioSaveHandlers
from reference_impl.vfio.sequences import VfioSequenceError, VfioStateDriver
from reference_impl.vfio.uapi import VfioInvalidTransition

if TYPE_CHECKING:
    from reference_impl.machine import Machine

DESTINATION_PREFIX = "destination:"
# Steps that never change a device state by themselves (their refusals change nothing either).
_NEUTRAL = frozenset({"set-capabilities", "set-parameters"})


@dataclass
class _Snapshot:
    """What a step may change, taken before it runs."""

    runstates: tuple[str, str]
    alive: tuple[bool, bool]
    migration: object
    status: tuple[str, str]


@dataclass
class VfioEvents:
    """The device-state drivers of both VMs and, once the run left the modelled paths, why."""

    source: dict[str, VfioStateDriver] = field(default_factory=dict)
    destination: dict[str, VfioStateDriver] = field(default_factory=dict)
    unpredicted: str | None = None
    # Runstate of the source when the pending migration was started (decides the switchover stop).
    _migrate_runstate: str | None = None

    @property
    def active(self) -> bool:
        """Some device sends events: only then can a step make the prediction impossible."""
        return bool(self.source or self.destination)

    def give_up(self, why: str) -> None:
        if self.unpredicted is None:
            self.unpredicted = why

    def states(self) -> dict[str, list[str]] | None:
        """``Outcome.vfio_states`` as the executor records it (devices without events left out)."""
        if self.unpredicted is not None:
            return None
        out: dict[str, list[str]] = {}
        for key, driver in self.source.items():
            if driver.changes:
                out[key] = driver.qapi_changes
        for key, driver in self.destination.items():
            if driver.changes:
                out[DESTINATION_PREFIX + key] = driver.qapi_changes
        return out

    # ------------------------------------------------------------------ the run

    def started(self, source: Machine) -> None:
        """Both VMs realized: the source ran its VM-state handlers at start, unseen (see the module doc)."""
        if source.runstate == "running":
            self._apply(self.source, lambda d: d.vm_start())
        for driver in self.source.values():
            driver.changes.clear()
            driver.kernel_path.clear()

    def before(self, source: Machine, destination: Machine) -> _Snapshot:
        return _Snapshot(
            runstates=(source.runstate, destination.runstate),
            alive=(source.alive, destination.alive),
            migration=source.migration,
            status=(source.status, destination.status),
        )

    def after(
        self,
        step: Step,
        error: str | None,
        snap: _Snapshot,
        source: Machine,
        destination: Machine,
        timed_out: bool,
    ) -> None:
        """Apply QEMU's device-state rules for what ``step`` did (``error``: the step's refusal, if any)."""
        if not self.active or self.unpredicted is not None:
            return
        action = step.action
        if error is None and action in ("start-postcopy", "snapshot-save", "migrate-continue"):
            self.give_up(f"the model has no device-state rule for an accepted {action}")
        elif action == "cancel" and snap.migration is not None:
            self.give_up("the model has no device-state rule for a cancelled migration")
        elif not (source.alive and destination.alive) or snap.alive != (True, True):
            self.give_up("a VM died")
        elif action in _NEUTRAL:
            return
        elif action == "migrate":
            self._migrate(step, error, snap, source)
        elif action == "wait":
            self._wait(snap, source, destination, timed_out)
        elif action in ("stop", "cont"):
            self._runstates(snap, source, destination)
        elif action in ("qmp", "snapshot-load"):
            changed = snap.runstates != (source.runstate, destination.runstate) or snap.status != (
                source.status,
                destination.status,
            )
            if changed:
                what = f"qmp {step.command}" if action == "qmp" else action
                self.give_up(f"{what} changed a run or migration state")

    def finished(self, source: Machine) -> None:
        """The scenario ended: a migration still running leaves the device mid-walk (racy)."""
        if self.active and source.migration is not None:
            self.give_up("the migration was still running at the end of the scenario")

    # ------------------------------------------------------------------ rules

    def _apply(self, drivers: dict[str, VfioStateDriver], rule: object) -> None:
        assert callable(rule)
        for driver in drivers.values():
            try:
                rule(driver)
            except (VfioSequenceError, VfioInvalidTransition) as exc:
                # QEMU reports an error (or resets the device) instead: not a path the model follows.
                self.give_up(f"device state error: {exc}")
                return

    def _runstates(self, snap: _Snapshot, source: Machine, destination: Machine) -> None:
        """``vm_start`` / ``vm_stop`` on either side: the VM-state handlers of its devices."""
        for drivers, before, after in (
            (self.source, snap.runstates[0], source.runstate),
            (self.destination, snap.runstates[1], destination.runstate),
        ):
            if before == "running" and after != "running":
                self._apply(drivers, lambda d, state=after: d.vm_stop(state))
            elif before != "running" and after == "running":
                self._apply(drivers, lambda d: d.vm_start())

    def _migrate(self, step: Step, error: str | None, snap: _Snapshot, source: Machine) -> None:
        if error is not None:
            return  # refused before (or, for a bad URI, right after) migrate_init: no save_setup
        if step.side != "source":
            self.give_up("the model has no device-state rule for a migration out of the destination")
            return
        m = source.migration
        if m is None or snap.migration is not None:
            self.give_up("the model has no device-state rule for this migrate")
            return
        why = _unfollowed(m)
        if why is not None:
            self.give_up(why)
            return
        self._migrate_runstate = snap.runstates[0]
        self._apply(self.source, lambda d: d.save_setup())

    def _wait(self, snap: _Snapshot, source: Machine, destination: Machine, timed_out: bool) -> None:
        if snap.migration is None:
            self._runstates(snap, source, destination)
            return
        if timed_out or source.migration is not None or source.status != "completed":
            self.give_up(f"the migration did not complete (source status {source.status})")
            return
        if self._migrate_runstate == "running":
            self._apply(self.source, lambda d: d.vm_stop("finish-migrate"))
        self._apply(self.source, lambda d: d.complete_precopy())
        self._apply(self.source, lambda d: d.save_cleanup())
        if destination.status == "completed":
            self._apply(self.destination, lambda d: d.load_setup())
            if destination.runstate == "running":
                self._apply(self.destination, lambda d: d.vm_start())
        elif snap.status[1] != destination.status:
            self.give_up(f"the destination ended its load in status {destination.status}")


def _unfollowed(m: object) -> str | None:
    """Why a migration ``migrate`` accepted takes a path without device-state rules, or None for a precopy
    the model follows to its end (reference_impl.migration.Migration's fields)."""
    if getattr(m, "failure", None) is not None:
        return "the model has no device-state rule for a migration that fails"
    if getattr(m, "background", False):
        return "the model has no device-state rule for a background snapshot"
    return None


def track(scenario: Scenario, source: Machine, destination: Machine) -> VfioEvents:
    """The drivers for every device of both VMs that sends VFIO_MIGRATION events."""
    events = VfioEvents()
    events.source = _drivers(scenario.source, source)
    events.destination = _drivers(scenario.destination, destination)
    return events


def _drivers(spec: VmSpec, vm: Machine) -> dict[str, VfioStateDriver]:
    """Keyed by qdev id (``""`` for an unnamed device), as the event's ``device-id``."""
    if vm.version < V9_1:
        return {}
    handlers = {h.name: h for h in vm.handlers if isinstance(h, VfioSaveHandlers)}
    drivers: dict[str, VfioStateDriver] = {}
    unnamed = 0
    for device in spec.devices:
        if device.driver != "vfio-pci":
            continue
        name = placeholder_name(device.id, unnamed)
        if device.id is None:
            unnamed += 1
        handler = handlers.get(name)
        if handler is None or not handler.properties.migration_events:
            continue
        drivers[device.id or ""] = VfioStateDriver(handler.migration_flags, vm.version)
    return drivers
