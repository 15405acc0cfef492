"""QMP commands on a modelled VM: the entry points predict and qmp_commands call.

Each function mirrors one QMP command handler and returns QEMU's error text or None. The model is split by what
each part is:
- reference_impl.migration_prechecks: ``migrate`` and ``migrate-incoming``, QEMU's checks before a migration
  starts (qmp_migrate, migrate_prepare, migrate_init);
- reference_impl.migration_wait: the contract's ``wait`` (:func:`finish`), the state machine of the version;
- reference_impl.quirks: the version and capability special cases ``finish`` applies, as a table;
- reference_impl.migration_state: the migration's state and the primitives all of them use;
- this module: the other commands (capabilities, parameters, postcopy, cancel, continue, quit, stop/cont,
  dump, snapshot-save), and the names callers take from ``reference_impl.migration``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from reference_impl.capabilities import IN_PROGRESS, N8_2, N10_0, N10_1, CapsCheckContext, apply_capability_request
from reference_impl.limits import NotModelled
from reference_impl.loadvm import load_failure, ram_section_footer
from reference_impl.machine import Machine
from reference_impl.migration_prechecks import migrate as migrate
from reference_impl.migration_prechecks import migrate_incoming as migrate_incoming
from reference_impl.migration_state import SOCKET_TRANSPORTS as SOCKET_TRANSPORTS
from reference_impl.migration_state import Migration as Migration
from reference_impl.migration_state import Scene as Scene
from reference_impl.migration_state import emit, kill, reads_stream
from reference_impl.migration_state import left_setup as left_setup
from reference_impl.migration_wait import finish as finish
from reference_impl.migration_wait import leave_pending as leave_pending
from reference_impl.parameters import apply_parameter_request
from reference_impl.savevm import PrepareContext, qemu_savevm_state_prepare
from reference_impl.timing import DEFAULT_MAX_BANDWIDTH, throttled


def caps_context(vm: Machine) -> CapsCheckContext:
    host = vm.host
    incoming = vm.incoming
    params = vm.params
    return CapsCheckContext(
        vm.runstate == "inmigrate",
        # migrate_incoming_started reads mis->transport_data, which migration_incoming_state_destroy clears
        # (migration_incoming_transport_cleanup) once the incoming migration ended: measured on 10.0.2 and
        # 10.2.2, multifd set on a destination whose precopy completed reaches the xbzrle rule instead.
        incoming in SOCKET_TRANSPORTS and (vm.runstate == "inmigrate" or vm.status.startswith("postcopy")),
        incoming is not None and incoming not in SOCKET_TRANSPORTS,
        host.userfaultfd,
        host.uffd_wp,
        vm.kvm_dirty_ring,
        bool(params) and params.get("multifd-compression", "none") != "none",
        bool(params) and bool(params.get("tls-creds", "")),
    )


def set_capabilities(vm: Machine, request: Mapping[str, bool]) -> str | None:
    """``qmp_migrate_set_capabilities``; see reference_impl.capabilities.apply_capability_request."""
    # migration_is_running() looks at this VM's outgoing migration only (the destination's incoming state
    # does not count: measured, set-capabilities after migrate-incoming reaches migrate_caps_check).
    # Before 8.1 that lets a destination turn multifd on while its incoming stream already flows. QEMU means
    # capabilities to stay fixed for the whole migration (qmp_migrate_set_capabilities refuses them while
    # migration_is_running; 8.1 adds "Multifd must be set before incoming starts" for the incoming side), so
    # the model lets the running migration go on as it was negotiated. Real 7.2 instead dereferences the
    # multifd receive state it never set up (multifd_recv_sync_main at the next RAM_SAVE_FLAG_EOS) and dies
    # with SIGSEGV: a known QEMU bug (harness/known_bugs.py, docs/qemu-bugs.md "8."), not a prediction.
    running = vm.migration is not None
    vm.caps, error = apply_capability_request(vm.version, vm.caps, request, caps_context(vm), migration_running=running)
    return error


def set_parameters(vm: Machine, request: Mapping[str, Any]) -> str | None:
    """``qmp_migrate_set_parameters``."""
    vm.params, error = apply_parameter_request(vm.version, vm.params, request, vm.caps)
    return error


# reference_impl.timing.SWITCH_BANDWIDTH: at or below it the precopy of the tiny scenario VMs is still running when
# migrate-start-postcopy arrives (harness sweep: with max-bandwidth 1000 both versions entered postcopy-active);
# above it, or at 0 (no limit), whether it did is timing, and the step is not modelled (reference_impl.timing).


def start_postcopy(vm: Machine) -> str | None:
    """``qmp_migrate_start_postcopy``: migrate_postcopy() (postcopy-ram or dirty-bitmaps), then state none."""
    if "postcopy-ram" not in vm.caps and "dirty-bitmaps" not in vm.caps:
        return "Enable postcopy with migrate_set_capability before the start of migration"
    if vm.status == "none":
        return "Postcopy must be started after migration has been started"
    m = vm.migration
    if m is not None:
        m.postcopy_requested = True
        slow = throttled(vm.params.get("max-bandwidth", DEFAULT_MAX_BANDWIDTH))
        m.postcopy = slow and ("postcopy-ram" in vm.caps or _switches_without_postcopiable(vm))
    return None


def _switches_without_postcopiable(vm: Machine) -> bool:
    """With only dirty-bitmaps (no bitmap to send) nothing is postcopiable (can_postcopy 0).

    Up to 10.0, migration_iteration_run checks completion first: once must_precopy is under the threshold so
    is the whole pending size, and the migration completes as precopy (measured on 10.0.2 and 7.2.22 with
    max-bandwidth 1,000,000: setup, active, [device,] completed). Peter Xu's commit 7aaa1fc072 ("migration:
    Rewrite the migration complete detect logic", 10.1) asks "Should we switch to postcopy now?" first, so
    postcopy_start runs: device, postcopy-active (no postcopy-device without a return path), completed
    (measured on 10.2.2, postcopy-dirty-bitmaps-only).
    """
    return vm.vn >= N10_1 and "dirty-bitmaps" in vm.caps


def cancel(scene: Scene, vm: Machine) -> str | None:
    """``qmp_migrate_cancel``. Idle: a no-op. Otherwise the source goes cancelling -> cancelled and keeps its
    runstate, and a destination reading the stream exits 1 (measured on both versions).

    migrate-start-postcopy only requests the switch, so a cancel right after it still lands before
    postcopy-active on 10.0.2 (measured: cancelled, destination died); the 10.0+ refusal "Postcopy migration in
    progress, cannot cancel." (measured when polled into postcopy-active) is not reachable from steps.
    Its last stderr line is racy; with postcopy requested, 10.0.2 printed "Input/output error" twice, 7.2.22
    "Invalid argument" (and once let the destination complete).
    """
    m = vm.migration
    if m is None:
        return None
    if m.raw and m.failure is not None and m.transport in SOCKET_TRANSPORTS:
        # A raw migrate's connect fails asynchronously (socket_outgoing_migration -> migrate_fd_error) and the
        # executor does not wait after a raw command: measured, the cancel came after the failure on 7.2.22
        # and 10.0.2 (setup, failed) and before it on 10.2.2 (setup, cancelling, cancelled).
        raise NotModelled("migrate_cancel racing a raw migrate's asynchronous connect failure")
    if vm.status == "setup" or vm.status == "none":
        emit(vm, "active")
    emit(vm, "cancelling")
    emit(vm, "cancelled")
    vm.migration = None
    if vm.runstate == "finish-migrate":
        # Stopped for the switchover (parked in pre-switchover): migration_iteration_finish restarts a VM that
        # ran; otherwise 7.2 sets postmigrate and 10.0 the runstate it had (s->vm_old_state). Measured on both
        # (qmp-cancel-pre-switchover, qmp-cancel-pre-switchover-paused); read: 8.0.0/8.1.0 as 7.2, 8.2.0 on as
        # 10.0 (migration_iteration_finish).
        if m.source_runstate == "running":
            vm.runstate = "running"
        else:
            vm.runstate = m.source_runstate if vm.vn >= N8_2 else "postmigrate"
    peer = scene.destination if vm is scene.source else scene.source
    if not reads_stream(m, peer):
        return None
    emit(peer, "active")
    emit(peer, "failed")
    if m.postcopy_requested and vm.vn >= N10_0:
        if peer.vn != vm.vn:
            raise NotModelled("a cancel after migrate-start-postcopy across QEMU versions")
        kill(peer, 1, "load of migration failed: Input/output error")
    else:
        # The cut stream fails RAM's section footer check; 10.2 (the destination prints it) appends it
        # (reference_impl.loadvm).
        kill(peer, 1, load_failure(peer.vn, ram_section_footer(vm)))
    return None


def quit_vm(scene: Scene, vm: Machine) -> None:
    """QMP quit: the process exits 0 with no stderr line (measured on both: "destination QEMU exited with
    status 0: "). A source streaming to a destination that quit fails at its next write (measured on 10.0.2:
    "Unable to write to socket: Broken pipe"; 7.2.22 had not connected yet: "Failed to connect ...")."""
    m = scene.source.migration
    if vm is scene.source and m is not None and m.failure is None and reads_stream(m, scene.destination):
        _quit_streaming_source(m, scene.destination, vm)
    kill(vm, 0, "")
    if vm is scene.destination and m is not None and m.transport in SOCKET_TRANSPORTS and m.failure is None:
        m.failure = ("Unable to write to socket: Broken pipe", None)
        m.fails_when_active = True


def _quit_streaming_source(m: Migration, peer: Machine, vm: Machine) -> None:
    """A source that quits mid-stream: qemu_cleanup -> migration_shutdown cancels the migration
    (migration_cancel, read in 7.2 and 10.0.2), so the destination's qemu_loadvm_state fails on the cut
    stream and process_incoming_migration_co exits 1, as after migrate_cancel (measured on 7.2.22, 10.0.2,
    10.2.2: "check_section_footer: Read section footer failed: -5", then "load of migration failed").
    After migrate-start-postcopy the destination may already run the guest: not followed."""
    if m.postcopy_requested:
        raise NotModelled("quit of a source after migrate-start-postcopy")
    emit(peer, "active")
    emit(peer, "failed")
    kill(peer, 1, load_failure(peer.vn, ram_section_footer(vm)))


def migrate_continue(vm: Machine) -> str | None:
    """``qmp_migrate_continue(state=pre-switchover)``: the status must be the one named (measured with no
    migration: "Migration not in expected state: none"); the migration then goes on (migration_maybe_pause
    moves pre-switchover -> device on both 7.2 and 10.0), resolved by the next wait."""
    if vm.status != "pre-switchover" or vm.migration is None:
        return f"Migration not in expected state: {vm.status}"
    vm.migration.continued = True
    return None


DUMP_BLOCKER = "Live migration disabled: dump-guest-memory in progress"


def start_detached_dump(vm: Machine) -> str | None:
    """QMP dump-guest-memory detach=true: an internal blocker (migrate_add_blocker_internal: busy check
    only) and the VM stopped in save-vm while the dump thread runs. Measured on 10.0.2 and 7.2.22: a migrate
    right after it is refused with the blocker text and the source reads save-vm."""
    error = vm.blockers.add(DUMP_BLOCKER, internal=True, busy=vm.migration is not None)
    if error is None:
        vm.dump_resume = vm.runstate
        if vm.runstate == "running":
            vm.runstate = "save-vm"
    return error


def dump_guest_memory(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_dump_guest_memory`` (dump/dump.c, read in 7.2 and 10.0.2): refused while inmigrate, then while a
    detached dump runs; the protocol's file is opened; then every dump, detached or not, takes the internal
    blocker (migrate_add_blocker_internal), whose busy check refuses it while a migration runs ("disallowing
    migration blocker (migration/snapshot in progress) for: Live migration disabled: dump-guest-memory in
    progress", measured on 7.2.22, 10.0.2, 10.2.2). A dump without detach ends before the command returns;
    detach=true keeps the blocker until the dump ends (the model assumes it still runs at the next step)."""
    if vm.runstate == "inmigrate":
        return "Dump not allowed during incoming migration."
    if vm.dump_resume is not None:
        return "There is a dump in process, please wait."
    unknown = sorted(set(arguments) - {"paging", "protocol", "detach"})
    protocol = str(arguments.get("protocol", ""))
    if unknown or not protocol.startswith("file:") or not os.path.isdir(os.path.dirname(protocol[5:]) or "."):
        # The format checks, fd: (getfd) and a file that cannot be created come first: not read here.
        raise NotModelled(f"dump-guest-memory with arguments {sorted(arguments)} (protocol {protocol!r})")
    if arguments.get("detach"):
        return start_detached_dump(vm)
    error = vm.blockers.add(DUMP_BLOCKER, internal=True, busy=vm.migration is not None or vm.runstate == "save-vm")
    vm.blockers.remove(DUMP_BLOCKER)
    return error


def finish_dump(vm: Machine) -> None:
    """A detached dump is over by the time a wait step has run: blocker removed, runstate restored."""
    if vm.dump_resume is not None:
        vm.blockers.remove(DUMP_BLOCKER)
        vm.runstate = vm.dump_resume
        vm.dump_resume = None


def stop(vm: Machine) -> str | None:
    """``qmp_stop``: while inmigrate it only clears autostart; a running VM pauses; otherwise nothing."""
    if vm.runstate == "inmigrate":
        vm.autostart = False
    elif vm.runstate == "running":
        vm.runstate = "paused"
        _runstate_changed(vm)
    return None


def cont(vm: Machine) -> str | None:
    """``qmp_cont``: while inmigrate it sets autostart (measured: {} and still inmigrate); else the VM runs.

    In finish-migrate (a paused postcopy source) it refuses before touching anything, same text in 7.2 and
    10.0 (qmp_cont: "Migration is not finalized yet")."""
    if vm.runstate == "finish-migrate":
        return "Migration is not finalized yet"
    if vm.runstate == "inmigrate":
        vm.autostart = True
    else:
        vm.runstate = "running"
        _runstate_changed(vm)
    return None


def _runstate_changed(vm: Machine) -> None:
    """The runstate the destination takes is the one global_state_store records at the switchover
    (migration_completion: 7.2 before vm_stop_force_state, 10.0 migration_stop_vm), not the one at migrate:
    a source in prelaunch that is continued during the precopy hands over 'running' (measured on 7.2.22,
    10.0.2, 10.2.2)."""
    if vm.migration is not None and not vm.migration.postcopy_requested:
        vm.migration.source_runstate = vm.runstate


def snapshot_save(vm: Machine) -> str | None:
    """The ``snapshot-save`` job's error (``save_snapshot`` -> ``qemu_savevm_state``), or None.

    Order (save_snapshot, migration/savevm.c): migration_is_blocked; then the block devices
    (bdrv_all_can_snapshot / bdrv_all_find_vmstate_bs: without a writable disk the job ends with "At least one
    device is required for snapshot"); then qemu_savevm_state: a running migration, then VFIO save_prepare
    with runstate save-vm for a live VM (vfio_save_prepare lets save-vm through; a paused VM keeps its
    runstate and is checked). Measured on both versions: the device error wins over a running migration
    (snapshot-save-during-migration) and over VFIO's postcopy refusal (vfio-savevm-paused-postcopy, 10.0.2).
    """
    blocked = vm.blockers.is_blocked()
    if blocked is not None:
        return blocked
    if vm.drives == 0:
        return "At least one device is required for snapshot"
    if vm.migration is not None:
        return IN_PROGRESS
    if vm.vn >= N8_2 and vm.handlers:
        runstate = "save-vm" if vm.runstate == "running" else vm.runstate
        ctx = PrepareContext(capabilities={c: True for c in vm.caps}, runstate=runstate)
        error = qemu_savevm_state_prepare(vm.handlers, ctx)
        if error is not None:
            return error
    # qemu_savevm_state: migrate_init, then setup -> completed on success (measured on 10.0.2 with a qcow2
    # drive: query-migrate reads completed afterwards, the VM keeps running).
    emit(vm, "setup")
    emit(vm, "completed")
    return None
