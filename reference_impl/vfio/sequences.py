"""The device-state sequences QEMU drives a VFIO device through (vfio_save_setup, vfio_vmstate_change,
vfio_migration_state_notifier; docs/vfio-lab.md, measured gating results: default precopy).

:class:`VfioStateDriver` keeps QEMU's cached ``migration->device_state`` and applies QEMU's rules for each
event (VM start/stop, save_setup, completion, cleanup, failure notifier, load_setup). Every request goes
through :func:`reference_impl.vfio.uapi.walk`, so an unreachable target raises exactly as the kernel's
-EINVAL would. The recorded sequence is what ``VFIO_MIGRATION`` events (9.1+, ``migration-events=on``)
report: one lowercase QAPI name per state change, comparable with ``Outcome.vfio_states``.

Modelled from 10.0's hw/vfio/migration.c and the 10.0.2 lab trace (a2: running-p2p, running, pre-copy,
pre-copy-p2p, stop-copy, stop). Version rules: P2P prepare callbacks from 8.2, PRE_COPY from 8.1, 8.0 always
stops to STOP, STOP_COPY->STOP in save_cleanup from 8.2 (at the end of completion before), no-op for an
unchanged state from 9.1. Before 9.1 there are no events; the sequence is then the states QEMU set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.versions import V8_1, V8_2, V9_1, Version
from reference_impl.vfio.uapi import MigrationFlag, VfioDeviceState, walk

S = VfioDeviceState
PRECOPY_STATES = frozenset({S.PRE_COPY, S.PRE_COPY_P2P})
# Runstates that make vfio_vmstate_change pick STOP_COPY for a device in a precopy state.
_STOP_COPY_RUNSTATES = ("finish-migrate", "paused")

SOURCE_OUTCOMES = ("completed", "setup-failed", "cancelled", "failed-after-switchover")


class VfioSequenceError(RuntimeError):
    """QEMU would report an error instead of changing the state (e.g. "Invalid device state")."""


@dataclass
class VfioStateDriver:
    """QEMU's side of one device's migration state (``vfio_migration_set_state`` and its callers)."""

    flags: MigrationFlag
    version: Version
    state: VfioDeviceState = S.RUNNING  # vfio_migration_init caches RUNNING at realize
    # States QEMU moved the device to, one per change (what VFIO_MIGRATION events show).
    changes: list[VfioDeviceState] = field(default_factory=list)
    # Every state the kernel stepped through, including combination-arc interiors (driver dmesg/traces).
    kernel_path: list[VfioDeviceState] = field(default_factory=list)

    @property
    def has_p2p(self) -> bool:
        # The prepare callback exists from 8.2 (94f775e428) and only for devices with P2P.
        return self.version >= V8_2 and bool(self.flags & MigrationFlag.P2P)

    @property
    def has_precopy(self) -> bool:
        return self.version >= V8_1 and bool(self.flags & MigrationFlag.PRE_COPY)

    def set_state(self, target: VfioDeviceState) -> None:
        """``vfio_migration_set_state``: the kernel walks to ``target`` (raises VfioInvalidTransition)."""
        if target == self.state and self.version >= V9_1:
            return  # 9.1+: no ioctl, no event
        self.kernel_path.extend(walk(self.state, target, self.flags))
        if target != self.state:
            self.changes.append(target)
        self.state = target

    # --- VM run state changes (vfio_vmstate_change_prepare / vfio_vmstate_change) ---
    def vm_start(self) -> None:
        if self.has_p2p:
            self.set_state(S.RUNNING_P2P)
        self.set_state(S.RUNNING)

    def vm_stop(self, runstate: str) -> None:
        """The VM leaves a running state for ``runstate`` (finish-migrate, paused, save-vm, ...)."""
        if self.has_p2p:
            self.set_state(S.PRE_COPY_P2P if self.state is S.PRE_COPY else S.RUNNING_P2P)
        if self.version < V8_1:
            self.set_state(S.STOP)
            return
        stop_copy = self.state in PRECOPY_STATES and runstate in _STOP_COPY_RUNSTATES
        self.set_state(S.STOP_COPY if stop_copy else S.STOP)

    # --- source migration (savevm handlers and the migration notifier) ---
    def save_setup(self) -> None:
        if not self.has_precopy:
            return
        if self.state is S.RUNNING:
            self.set_state(S.PRE_COPY)
        elif self.state is not S.STOP and self.version >= V9_1:
            raise VfioSequenceError(f"Invalid device state {int(self.state)}")

    def complete_precopy(self) -> None:
        self.set_state(S.STOP_COPY)
        if self.version < V8_2:
            self.set_state(S.STOP)  # before 5485298ce0 completion itself went back to STOP

    def save_cleanup(self) -> None:
        if self.version >= V8_2 and self.state is S.STOP_COPY:
            self.set_state(S.STOP)

    def migration_failed(self) -> None:
        """Cancel or failure notifier: back to RUNNING (whether or not the VM runs)."""
        self.set_state(S.RUNNING)

    # --- destination ---
    def load_setup(self) -> None:
        self.set_state(S.RESUMING)

    @property
    def qapi_changes(self) -> list[str]:
        return [s.qapi_name for s in self.changes]


def source_sequence(
    flags: MigrationFlag,
    version: Version,
    *,
    vm_running: bool = True,
    stopped_before_migrate: bool = False,
    outcome: str = "completed",
) -> list[str]:
    """The source device's state changes from QEMU start to the end of one precopy migration.

    ``vm_running``: the VM runs when ``migrate`` is issued (started without -S, or -S then ``cont``: both
    run the VM-start callbacks once). ``stopped_before_migrate``: it ran and was then stopped (``stop``).
    ``outcome``: completed | setup-failed (e.g. ram_save_setup failing before VFIO's save_setup, lab P3) |
    cancelled (before the switchover stop) | failed-after-switchover.
    Order on failure follows 10.0: the VM is restarted (if it was live) before save_cleanup, then the
    failure notifier moves the device to RUNNING.
    """
    if outcome not in SOURCE_OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r} (allowed: {', '.join(SOURCE_OUTCOMES)})")
    drv = VfioStateDriver(flags, version)
    live = vm_running or stopped_before_migrate
    if live:
        drv.vm_start()
    if stopped_before_migrate:
        drv.vm_stop("paused")
        vm_running = False
    if outcome == "setup-failed":
        drv.save_cleanup()
        drv.migration_failed()
        return drv.qapi_changes
    drv.save_setup()
    if outcome == "cancelled":
        drv.save_cleanup()
        drv.migration_failed()
        return drv.qapi_changes
    if vm_running:
        drv.vm_stop("finish-migrate")
    # A VM that is not running is only relabelled finish-migrate: no VM-state callbacks run.
    drv.complete_precopy()
    if outcome == "failed-after-switchover":
        if vm_running:
            drv.vm_start()
        drv.save_cleanup()
        drv.migration_failed()
        return drv.qapi_changes
    drv.save_cleanup()
    return drv.qapi_changes


def destination_sequence(flags: MigrationFlag, version: Version, *, start_vm: bool = False) -> list[str]:
    """The destination device's state changes: RESUMING at load_setup, then the VM-start callbacks if
    the destination runs the VM after loading (it stays RESUMING in a paused, -S destination: lab a2)."""
    drv = VfioStateDriver(flags, version)
    drv.load_setup()
    if start_vm:
        drv.vm_start()
    return drv.qapi_changes


def snapshot_sequence(flags: MigrationFlag, version: Version, *, vm_running: bool = True) -> list[str]:
    """The device's state changes for ``snapshot-save`` / HMP ``savevm`` (save_snapshot, qemu_savevm_state).

    The VM is stopped first (runstate save-vm, so the device goes to STOP, not STOP_COPY), the iterables
    are saved from there, the savevm cleanup returns the device to STOP, and a VM that was running is
    restarted afterwards. Derived from the source (save_snapshot), not measured in the lab.
    """
    drv = VfioStateDriver(flags, version)
    if vm_running:
        drv.vm_start()
        drv.vm_stop("save-vm")
    drv.save_setup()
    drv.complete_precopy()
    drv.save_cleanup()
    if vm_running:
        drv.vm_start()
    return drv.qapi_changes
