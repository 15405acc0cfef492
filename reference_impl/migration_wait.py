"""The contract's ``wait``: the migration state machine that resolves a migration ``migrate`` started.

:func:`finish` applies the version's state machine (migration_thread, migration_completion): the statuses each
side goes through, MIGRATION events (cap ``events``), the runstates both sides end in, and the destination's
load of a file/exec stream. The version and capability special cases real QEMU adds are the table in
reference_impl.quirks, applied in the order its docstring gives.
"""

from __future__ import annotations

from contract import messages
from contract.messages import DESTINATION_MIGRATION_END
from contract.policy import DEFAULT_WAIT_TIMEOUT_S
from contract.sizes import whole_mib
from reference_impl.capabilities import N10_0, N10_2
from reference_impl.cross import ack_never_comes, check_quirk, check_stream_races
from reference_impl.limits import NotModelled
from reference_impl.loadvm import config_mismatch, missing_vdagent
from reference_impl.machine import Machine
from reference_impl.migration_prechecks import migrate_incoming
from reference_impl.migration_state import (
    SOCKET_TRANSPORTS,
    Migration,
    Scene,
    emit,
    incoming_runstate,
    kill,
    reads_stream,
    wait_timed_out,
)
from reference_impl.quirks import (
    LOAD,
    RETURN_PATH,
    STREAM,
    SWITCHOVER,
    EndsWait,
    Fails,
    LoadFails,
    Races,
    WaitContext,
    first_quirk,
)


def finish(scene: Scene, vm: Machine) -> None:
    """The contract's ``wait``: resolve the migration ``vm`` started, on both sides."""
    m = vm.migration
    if m is None:
        return
    peer = scene.destination if vm is scene.source else scene.source
    ctx = WaitContext.of(vm, peer, m)
    _check_uuid(scene, vm)
    if m.failure is None:
        if reads_stream(m, peer) and _waits_for_channels(vm, peer):
            _complete_unread(scene, vm, m, peer, ctx)
            return
        if reads_stream(m, peer):
            check_stream_races(vm, peer)
            if ack_never_comes(vm, peer, vm.runstate == "running"):
                _end_wait(scene, vm, m, peer, EndsWait(destination=("active",), timeout=True, last_seen="active"))
                return
        quirk = first_quirk(STREAM, ctx, vm.vn) or first_quirk(SWITCHOVER, ctx, vm.vn)
        if quirk is not None:
            check_quirk(quirk.id, vm, peer)
            if isinstance(quirk.effect, Races):
                raise NotModelled(quirk.effect.why)
            if isinstance(quirk.effect, EndsWait):
                _end_wait(scene, vm, m, peer, quirk.effect)
                return
            if isinstance(quirk.effect, Fails):
                m.failure = (quirk.effect.error, quirk.effect.stderr)
                m.fails_when_active = True
                m.fails_after = quirk.effect.after
    # 7.2.22 background-snapshot + block over tcp hung the source's monitor once (harness sweep) and completed
    # in the 23:07 sweep: a race (docs/qemu-bugs.md), the model predicts completion.
    vm.migration = None
    if m.failure is not None:
        _fail(scene, vm, m, peer)
    else:
        _complete(scene, vm, m, peer, ctx)


def _check_uuid(scene: Scene, vm: Machine) -> None:
    """vmstate_uuid (savevm.c): sent when the source has validate-uuid and a -uuid (vmstate_uuid_needed); a
    destination with another -uuid fails its post_load ("UUID received is ... and local is ...") and exits 1
    (measured on 7.2.22, 10.0.2, 10.2.2 over tcp). Over tcp the source then either completed (7.2.22) or failed
    on its next write (10.0.2 and 10.2.2: "Connection reset by peer"), the race reference_impl.cross describes
    for a refused configuration section; the file/exec load was not measured: not modelled either way."""
    source_uuid, destination_uuid = scene.extra.get("uuids", (None, None))
    if "validate-uuid" in vm.caps and source_uuid and destination_uuid and source_uuid != destination_uuid:
        raise NotModelled(
            "validate-uuid with another -uuid on the destination (its load fails; the source's end is a race)"
        )


def _waits_for_channels(source: Machine, destination: Machine) -> bool:
    """A destination that listened with multifd on, fed by a source without it: migration_ioc_process_incoming
    takes the first connection as the main channel and starts the load only once every multifd channel has
    connected (7.2: start_migration = !migrate_use_multifd(); 8.1+: migration_has_all_channels), so it never
    starts. Measured on 7.2.22 (stays none, only 7.2's setup event), 10.0.2 and 10.2.2 (stay setup). The
    source, which never reads a return path, writes the whole stream into the socket and completes: only a
    stream that fits the loopback socket buffers (a VM of at most 256M, firmware only) was measured.
    A 7.2 destination that turned multifd on after its listener started is reference_impl.cross's case.

    With multifd on both sides, a destination that counts more channels (multifd-channels, default 2) than the
    source opens waits the same way (multifd_recv_all_channels_created; measured 2 -> 4 on the three versions).
    The other mismatches are races, not modelled: fewer channels on the destination (multifd_recv_new_channel
    refuses the extra id: 7.2.22's source failed "Connection reset by peer" with the destination left active,
    10.0.2's and 10.2.2's destination monitor stopped answering), another multifd-compression (the destination
    exits; the source fails with a socket text timing picks: "Broken pipe" on the three, 1 run each)."""
    if "multifd" not in destination.incoming_caps:
        return False
    if "multifd" in source.caps:
        if _method(source) != _method(destination):
            raise NotModelled("multifd-compression differs between the sides of a tcp/unix migration")
        sent, expected = _channels(source), _channels(destination)
        if sent > expected:
            raise NotModelled("more multifd channels on the source than the destination accepts")
        if sent == expected:
            return False
    if whole_mib(source.memory) > 256:
        raise NotModelled("multifd channels the destination waits for, with a stream larger than the socket buffers")
    return True


def _method(vm: Machine) -> str:
    return str(vm.params.get("multifd-compression", "none"))


def _channels(vm: Machine) -> int:
    return int(vm.params.get("multifd-channels", 2))  # MigrationParameters default (DEFAULT_MIGRATE_MULTIFD_CHANNELS)


def _complete_unread(scene: Scene, vm: Machine, m: Migration, peer: Machine, ctx: WaitContext) -> None:
    """The source completes (_complete's path); the destination stays where it is and the executor's wait for
    its end runs out (harness.pair.wait_destination_end)."""
    vm.migration = None
    for status in _source_path(vm.vn, m, ctx):
        if status != vm.status:
            emit(vm, status)
    vm.runstate = "postmigrate"
    scene.extra["timeout"] = messages.wait_timed_out(DESTINATION_MIGRATION_END, DEFAULT_WAIT_TIMEOUT_S, peer.status)


def _end_wait(scene: Scene, vm: Machine, m: Migration, peer: Machine, effect: EndsWait) -> None:
    """A quirk's :class:`EndsWait`: the migration stays where the quirk leaves it (or ends with its error)."""
    if vm.status == "setup":
        emit(vm, "active")
    for status in effect.source:
        if vm.status != status:
            emit(vm, status)
    if effect.source_runstate is not None:
        vm.runstate = effect.source_runstate
    if effect.error is not None:
        vm.error_desc = effect.error
        vm.migration = None
    if reads_stream(m, peer):
        for status in effect.destination:
            emit(peer, status)
        if effect.destination_runs:
            peer.runstate = incoming_runstate(m.source_runstate, peer.autostart)
    if effect.timeout:
        scene.extra["timeout"] = wait_timed_out(effect.last_seen or vm.status)


def _fail(scene: Scene, vm: Machine, m: Migration, peer: Machine) -> None:
    """migrate_fd_error / the migration thread's error exit: the source fails and keeps its runstate; a
    destination reading the stream sees it break and exits (``Migration.peer_exit``)."""
    assert m.failure is not None
    desc, line = m.failure
    if m.fails_when_active and vm.status == "setup":
        emit(vm, "active")
    for status in m.fails_after:
        emit(vm, status)
    emit(vm, "failed")
    vm.error_desc = desc
    if line is not None:
        scene.extra.setdefault("source_stderr", line)
    if reads_stream(m, peer):
        emit(peer, "active")
        exit_status, exit_line = m.peer_exit
        if exit_status == 1:
            emit(peer, "failed")
        kill(peer, exit_status, exit_line)


def _complete(scene: Scene, vm: Machine, m: Migration, peer: Machine, ctx: WaitContext) -> None:
    """migration_completion on the source, then the destination: it reads the socket stream, or the executor
    loads the file the source wrote (file:F / exec:cat F) once the source completed."""
    path = _source_path(vm.vn, m, ctx)
    if m.continued:
        # After pre-switchover: device, then the rest (migration_maybe_pause's new state is device).
        path = ("device", *(s for s in path if s not in ("active", "device")))
    for status in path:
        if status != vm.status:  # "active" may already be reached (left_setup)
            emit(vm, status)
    if not m.background:
        vm.runstate = "postmigrate"
    if not peer.alive or peer.runstate != "inmigrate":
        return
    if m.transport not in SOCKET_TRANSPORTS:
        if m.raw:
            return  # the executor loads only the stream its own migrate step wrote
        if migrate_incoming(peer, m.transport) is not None:
            if vm.vn != peer.vn:
                # A file: stream from 8.2+ into a 7.2 destination: the executor's load is refused (at its
                # "migrate" stage, after 7.2's setup event): not followed by the model's steps.
                raise NotModelled("a destination that refuses the stream's transport when it is loaded")
            return
        load_error = _load_failure(vm, peer, ctx)
    else:
        load_error = _socket_load_failure(vm, peer, ctx)
    emit(peer, "active")  # no second MIGRATION active for a destination a parked pre-switchover left active
    if load_error is not None:
        emit(peer, "failed")
        kill(peer, 1, load_error)
        return
    if m.postcopy and not m.background:
        if peer.vn >= N10_2 and RETURN_PATH(ctx):
            # postcopy_ram_listen_thread (10.2.2): active -> postcopy-device while the source's return path
            # exists (mis->to_src_file), then loadvm_postcopy_handle_run -> postcopy-active (measured, events on
            # the destination).
            emit(peer, "postcopy-device")
        # postcopy_ram_listen_thread: postcopy-active -> completed, then migration_incoming_state_destroy.
        # 7.2 accepts postcopy with multifd (rule e came in 8.1) and means it to complete like any postcopy
        # (with postcopy-preempt too); real 7.2 aborts the destination in that cleanup
        # (yank_unregister_instance: the multifd channels' yank functions are still registered): a known QEMU
        # bug (harness/known_bugs.py, docs/qemu-bugs.md "5."), not a prediction.
        if peer.vn >= N10_2 and RETURN_PATH(ctx):
            # 10.2 postcopy_listen_thread (postcopy-ram.c): postcopy-device while a return path exists
            # (mis->to_src_file), postcopy-active once loadvm_postcopy_handle_run_bh ran (measured on 10.2.2,
            # events on both sides).
            emit(peer, "postcopy-device")
        emit(peer, "postcopy-active")
    emit(peer, "completed")
    if m.postcopy and not m.background:
        # loadvm_postcopy_handle_run_bh (7.2, 10.0, 10.2 savevm.c) starts the VM on autostart alone: unlike
        # process_incoming_migration_bh it never reads the source's runstate (measured: a source stopped before
        # migrate, postcopy, and the destination runs on 7.2.22, 10.0.2, 10.2.2; rs-postcopy-stopped).
        peer.runstate = "running" if peer.autostart else "paused"
        return
    peer.runstate = incoming_runstate(m.source_runstate, peer.autostart)


def _source_path(v: int, m: Migration, ctx: WaitContext) -> tuple[str, ...]:
    """The statuses after setup on a successful run (migration_completion; measured 10.0.2 / 7.2.22 in
    docs/real-qemu-facts.md flow-precopy). 10.2's postcopy_start goes device -> postcopy-device only with a
    return path (rp_thread_created), else straight to postcopy-active (dirty-bitmaps alone, measured 10.2.2)."""
    if m.background:
        return ("active", "completed")
    if m.postcopy:
        if v >= N10_2 and RETURN_PATH(ctx):
            return ("active", "device", "postcopy-device", "postcopy-active", "completed")
        if v >= N10_0:
            return ("active", "device", "postcopy-active", "completed")
        return ("active", "postcopy-active", "completed")
    if v >= N10_0:  # commit 4881411136: precopy always passes through device
        return ("active", "device", "completed")
    return ("active", "completed")


def _load_failure(source: Machine, destination: Machine, ctx: WaitContext) -> str | None:
    """Why the destination cannot load a file/exec stream the source completed (the destination exits 1 with
    "load of migration failed: ..."): a destination configured unlike the source, then the ``load`` quirks.

    mapped-ram + x-ignore-shared: QEMU means the file to load (ram_save_setup writes each block's GPA, then its
    mapped-ram header). Real 10.0.2 fails the load with EINVAL because parse_ramblock returns after
    parse_ramblock_mapped_ram without reading the GPA: a known QEMU bug (harness/known_bugs.py,
    docs/qemu-bugs.md "9."), not a prediction.
    """
    mismatch = config_mismatch(source, destination)
    if mismatch is not None:
        return mismatch
    quirk = first_quirk(LOAD, ctx, source.vn)
    if quirk is not None and isinstance(quirk.effect, LoadFails):
        check_quirk(quirk.id, source, destination)
        return quirk.effect.line
    return None


def _socket_load_failure(source: Machine, destination: Machine, ctx: WaitContext) -> str | None:
    """Why the destination cannot load a socket stream whose source completed. Only the vdagent section is
    modelled (loadvm.missing_vdagent): it comes with the final device states, after which a precopy source
    without a return path has completed. A return path would carry the destination's failure back to the
    source (migration_completion waits for it), and postcopy sends those states in its package: not modelled."""
    line = missing_vdagent(source, destination)
    mismatch = config_mismatch(source, destination) if source.version == destination.version else None
    if mismatch is not None and mismatch != line:
        # The destination fails at a section near the start (qemu_savevm_state_blocked, the configuration, RAM)
        # and exits; whether the source has written its whole stream into the socket by then is timing (nvme on
        # the destination only, over tcp: the source failed "Unable to write to socket" 4 of 5, completed 1 of 5
        # on 7.2.22 and 10.2.2; docs/real-qemu-facts.md "Core corners"). Over file/exec it is deterministic.
        raise NotModelled("a destination configured unlike its source, over a socket (the source may finish first)")
    if line is not None and (RETURN_PATH(ctx) or ctx.postcopy):
        raise NotModelled("a destination that cannot load the final device states, with a return path or postcopy")
    return line


def leave_pending(scene: Scene, vm: Machine) -> None:
    """A migration still running when the scenario ends (no wait, or a later step refused): the executor
    reads the final states at once. Measured (10.0.2, 7.2.22; racy): the source still reports setup unless a
    step waited for it to leave setup, the destination already reports active; both MIGRATION event lists,
    recorded a moment later, include active."""
    m = vm.migration
    if m is None:
        return
    if "events" in vm.caps and "active" not in vm.events:
        vm.events.append("active")
    peer = scene.destination
    if reads_stream(m, peer):
        emit(peer, "active")
