"""The migration core: QMP commands on a modelled VM and the migration state machine.

Each function mirrors one QMP command handler and returns QEMU's error text or None. Pre-checks run in
QEMU's order (qmp_migrate, migrate_prepare: docs/real-qemu-facts.md migrate-order; measured in
docs/real-qemu-facts.md#checks). A migration that ``migrate`` accepted is resolved by :func:`finish` (the contract's
``wait``), which applies the state machine of the version: statuses, MIGRATION events (cap ``events``), and the
runstates both sides end in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.messages import SOURCE_MIGRATION_END, vm_exited, wait_timed_out
from contract.policy import DEFAULT_WAIT_TIMEOUT_S
from contract.sizes import parse_mib
from reference_impl.capabilities import (
    IN_PROGRESS,
    N8_0,
    N8_1,
    N8_2,
    N9_0,
    N10_0,
    N10_2,
    CapsCheckContext,
    apply_capability_request,
)
from reference_impl.machine import Machine
from reference_impl.parameters import apply_parameter_request
from reference_impl.savevm import PrepareContext, qemu_savevm_state_prepare

SOCKET_TRANSPORTS = frozenset({"tcp", "unix"})
# Schemes qmp_migrate dispatches on before 8.2 (no file:); others fail after migrate_init.
_PRE_8_2_SCHEMES = frozenset({"tcp", "unix", "exec", "fd", "rdma", "vsock"})

# What the destination prints when its incoming stream breaks (cancel, source failure): QEMU 10.0.2 and
# 7.2.22 exit with status 1 and this last stderr line (docs/real-qemu-facts.md#cancel--failure).
DESTINATION_LOAD_FAILURE = "load of migration failed: Invalid argument"


@dataclass
class Migration:
    """An outgoing migration that ``migrate`` accepted (source side)."""

    transport: str
    background: bool  # background-snapshot
    source_runstate: str  # runstate when migrate ran: decides the destination's runstate
    left_setup: bool = False  # a step waited for the migration to leave setup (start-postcopy, cancel)
    # How the destination ends when the migration fails: (exit status, last stderr line).
    peer_exit: tuple[int, str] = (1, "load of migration failed: Invalid argument")
    # The failure comes after setup -> active (a broken stream), not in setup (connect, channel setup).
    fails_when_active: bool = False
    postcopy: bool = False  # the migration switches to postcopy (start-postcopy came while precopy ran)
    postcopy_requested: bool = False  # migrate-start-postcopy accepted
    # A failure known at migrate time: (error-desc or None, the source's last stderr line or None).
    failure: tuple[str | None, str | None] | None = None
    continued: bool = False  # migrate-continue released it from pre-switchover
    # Statuses a failing migration passes through after active, before failed (10.0: device on a switchover
    # that fails reading the return path).
    fails_after: tuple[str, ...] = ()


@dataclass
class Scene:
    """Both VMs and what the scenario has set up between them."""

    source: Machine
    destination: Machine
    socket_uri: bool = False  # migrate-incoming tcp/unix done (later migrates reuse the URI)
    extra: dict[str, Any] = field(default_factory=dict)


def emit(vm: Machine, status: str) -> None:
    """``migrate_set_state``: the status changes; MIGRATION is sent only with cap ``events`` on."""
    vm.status = status
    if "events" in vm.caps:
        vm.events.append(status)


def caps_context(vm: Machine) -> CapsCheckContext:
    host = vm.host
    incoming = vm.incoming
    params = vm.params
    return CapsCheckContext(
        vm.runstate == "inmigrate",
        incoming in SOCKET_TRANSPORTS,
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


def migrate_incoming(vm: Machine, transport: str) -> str | None:
    """``qmp_migrate_incoming`` on the destination (started with ``-incoming defer``).

    8.1+ moves the incoming state none -> setup here (migrate_set_state: an event only with cap events);
    7.2/8.0 keep query-migrate empty but send MIGRATION setup unconditionally
    (qemu_start_incoming_migration). Measured on both (docs/real-qemu-facts.md#flow-precopy).
    """
    if vm.incoming is not None:
        return "The incoming migration has already been started"
    if vm.runstate != "inmigrate":
        return "'-incoming' was not specified on the command line"
    if vm.vn < N8_2 and transport == "file":
        return "unknown migration protocol: file:<FILE>"
    if vm.vn >= N8_0:
        # qemu_start_incoming_migration checks the channels against the caps like migrate does (measured on
        # 10.0.2 by the harness sweep: mapped-ram + tcp refused with the seekable message, status stays none).
        error = _transport_check(vm, transport)
        if error is not None:
            return error
    vm.incoming = transport
    if vm.vn >= N8_1:
        emit(vm, "setup")
    else:
        vm.events.append("setup")
    return None


def _transport_check(vm: Machine, transport: str) -> str | None:
    """``migration_channels_and_transport_compatible`` (8.0+): seekable first, then multi-channel."""
    caps = vm.caps
    if "mapped-ram" in caps and transport != "file":
        return "Migration requires seekable transport (e.g. file)"
    needs_channels = "multifd" in caps or "postcopy-preempt" in caps
    channels_ok = transport in SOCKET_TRANSPORTS or (transport == "file" and "mapped-ram" in caps)
    if needs_channels and not channels_ok:
        return "Migration requires multi-channel URIs (e.g. tcp)"
    return None


def connect_refused(transport: str) -> str:
    """error-desc of a socket migration whose destination no longer listens (a reused URI after the
    destination completed or died). Measured for tcp on 10.0.2 and 7.2.22 ("Failed to connect to
    '127.0.0.1:42077': Connection refused"); the port and socket path are host-specific: the model writes
    the placeholders harness.compare normalises them to. unix is assumed to answer the same way."""
    where = "127.0.0.1:<port>" if transport == "tcp" else "<path>"
    return f"Failed to connect to '{where}': Connection refused"


def migrate(vm: Machine, transport: str, *, peer_listening: bool = True, path_error: str | None = None) -> str | None:
    """``qmp_migrate`` + ``migrate_prepare`` + ``migrate_init``: the error, or None once the migration started.

    Refusals before migrate_init change nothing (status, error-desc and runstate stay; no event).
    ``path_error``: the target path of a scenario-chosen URI cannot be opened (file: refused after
    migrate_init, setup -> failed; unix: the connect fails asynchronously with this error-desc).
    """
    v = vm.vn
    caps = vm.caps
    if v >= N8_0:
        error = _transport_check(vm, transport)
        if error is not None:
            return error
    # migrate_prepare (migration/migration.c).
    if vm.migration is not None:
        return IN_PROGRESS
    if vm.runstate == "inmigrate":
        return "Guest is waiting for an incoming migration"
    if vm.runstate == "postmigrate":
        return "Can't migrate the vm that was paused due to previous migration"
    blocked = vm.blockers.is_blocked()
    if blocked is not None:
        return blocked
    if v >= N9_0 and "mapped-ram" in caps:
        if vm.params.get("tls-creds", ""):
            return "Cannot use TLS with mapped-ram"
        if vm.params.get("multifd-compression", "none") != "none":
            return "Cannot use compression with mapped-ram"
    # migrate_mode_is_cpr (9.0+): the CPR modes refuse postcopy, background snapshot and COLO (migrate_prepare;
    # not run here).
    if v >= N9_0 and vm.params.get("mode", "normal") != "normal":
        for cap, what in (("postcopy-ram", "postcopy"), ("background-snapshot", "background snapshot"),
                          ("x-colo", "COLO")):
            if cap in caps:
                return f"Cannot use {what} with CPR"
    # migrate_init -> qemu_savevm_state_prepare (8.2+): VFIO's save_prepare refuses postcopy / bg-snapshot.
    if v >= N8_2 and vm.handlers:
        ctx = PrepareContext(capabilities={c: True for c in caps}, runstate=vm.runstate)
        error = qemu_savevm_state_prepare(vm.handlers, ctx)
        if error is not None:
            return error
    vm.error_desc = None
    emit(vm, "setup")
    if v < N8_2 and transport not in _PRE_8_2_SCHEMES:
        # No file: transport before 8.2 (and no other unknown scheme): "Parameter 'uri' expects a valid
        # migration protocol" comes after migrate_init and moves setup -> failed (measured on 7.2.22 with
        # file: and bogus:; docs/real-qemu-facts.md migrate-order says 7.2-8.1).
        emit(vm, "failed")
        return "Parameter 'uri' expects a valid migration protocol"
    if path_error is not None and transport == "file":
        # file_start_outgoing_migration: the open fails, migrate_fd_error moves setup -> failed (10.0.2).
        emit(vm, "failed")
        vm.error_desc = path_error
        return path_error
    migration = Migration(
        transport=transport, background="background-snapshot" in caps, source_runstate=vm.runstate
    )
    if v < N8_0 and transport not in SOCKET_TRANSPORTS and "multifd" in caps:
        # 7.2 has no transport check at migrate time: the outgoing side fails in setup and prints this line
        # without a program prefix; status failed with no error-desc (measured, #slots-and-buses).
        migration.failure = (None, "multifd is not supported by current protocol")
    elif v < N8_0 and transport not in SOCKET_TRANSPORTS and "postcopy-preempt" in caps:
        migration.failure = (None, None)  # accepted then failed on 7.2.22; its stderr text was not recorded
    elif transport in SOCKET_TRANSPORTS and not peer_listening:
        desc = path_error if path_error is not None else connect_refused(transport)
        migration.failure = (desc, desc)
    else:
        migration.failure = _vfio_failure(vm)
        # A VFIO failure comes from qemu_savevm_state_setup (ram_save_setup: the dirty-log start fails);
        # migration_thread handles setup failures only after qemu_savevm_wait_unplug moved setup -> active,
        # then active -> failed (real 10.0.2, lab: vfio-precopy-migratable events setup, active, failed).
        migration.fails_when_active = migration.failure is not None
    vm.migration = migration
    return None


def _vfio_failure(vm: Machine) -> tuple[str | None, str | None] | None:
    """A migration that VFIO makes fail after it started (e.g. a broken DMA-logging report), if any."""
    if not vm.handlers:
        return None
    try:
        from reference_impl.vfio.handlers import vfio_migration_failure
    except ImportError:  # the VFIO model is optional for the core
        return None
    ctx = PrepareContext(capabilities={c: True for c in vm.caps}, runstate=vm.runstate)
    error = vfio_migration_failure(vm.handlers, ctx)
    return (error, error) if error is not None else None


# At or below this max-bandwidth (bytes/s) the precopy of the tiny scenario VMs is still running when
# migrate-start-postcopy arrives; above it (e.g. the 128 MiB/s default) precopy has usually completed first
# (harness sweep: postcopy-ram + events with the default bandwidth showed no postcopy-active on either
# version; with max-bandwidth 1000 both entered postcopy-active). The threshold between is a model choice.
SLOW_BANDWIDTH = 10_000_000


def start_postcopy(vm: Machine) -> str | None:
    """``qmp_migrate_start_postcopy``: migrate_postcopy() (postcopy-ram or dirty-bitmaps), then state none."""
    if "postcopy-ram" not in vm.caps and "dirty-bitmaps" not in vm.caps:
        return "Enable postcopy with migrate_set_capability before the start of migration"
    if vm.status == "none":
        return "Postcopy must be started after migration has been started"
    m = vm.migration
    if m is not None:
        m.postcopy_requested = True
        # With only dirty-bitmaps (no bitmap to send), nothing is postcopiable: the request is accepted but
        # the migration never enters postcopy-active and completes as precopy (measured on 10.0.2 and 7.2.22
        # with max-bandwidth 1,000,000: setup, active, [device,] completed).
        m.postcopy = "postcopy-ram" in vm.caps and int(vm.params.get("max-bandwidth", 134217728)) <= SLOW_BANDWIDTH
    return None


def _kill(vm: Machine, status: int, line: str) -> None:
    vm.alive = False
    vm.exit_line = vm_exited(vm.role, status, line)


def left_setup(vm: Machine) -> None:
    """The executor's bounded wait for the migration to leave setup (before start-postcopy and cancel)."""
    m = vm.migration
    if m is not None and not m.left_setup:
        m.left_setup = True
        if vm.status == "setup":
            emit(vm, "active")


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
    if m.transport in SOCKET_TRANSPORTS and peer.alive and peer.runstate == "inmigrate" and peer.incoming:
        emit(peer, "active")


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
    if vm.status == "setup" or vm.status == "none":
        emit(vm, "active")
    emit(vm, "cancelling")
    emit(vm, "cancelled")
    vm.migration = None
    peer = scene.destination if vm is scene.source else scene.source
    if not (m.transport in SOCKET_TRANSPORTS and peer.alive and peer.runstate == "inmigrate" and peer.incoming):
        return None
    emit(peer, "active")
    emit(peer, "failed")
    if m.postcopy_requested and vm.vn >= N10_0:
        _kill(peer, 1, "load of migration failed: Input/output error")
    else:
        _kill(peer, 1, DESTINATION_LOAD_FAILURE)
    return None


def incoming_runstate(source_runstate: str, autostart: bool) -> str:
    """``process_incoming_migration_bh``: a live source makes the destination run (paused without autostart);
    otherwise the destination takes the source's runstate (measured: prelaunch -> prelaunch, paused -> paused)."""
    if source_runstate == "running":
        return "running" if autostart else "paused"
    return source_runstate


def _source_path(v: int, m: Migration) -> tuple[str, ...]:
    """The statuses after setup on a successful run (migration_completion; measured 10.0.2 / 7.2.22 in
    docs/real-qemu-facts.md flow-precopy)."""
    if m.background:
        return ("active", "completed")
    if m.postcopy:
        if v >= N10_2:
            return ("active", "device", "postcopy-device", "postcopy-active", "completed")
        if v >= N10_0:
            return ("active", "device", "postcopy-active", "completed")
        return ("active", "postcopy-active", "completed")
    if v >= N10_0:  # commit 4881411136: precopy always passes through device
        return ("active", "device", "completed")
    return ("active", "completed")


def quit_vm(scene: Scene, vm: Machine) -> None:
    """QMP quit: the process exits 0 with no stderr line (measured on both: "destination QEMU exited with
    status 0: "). A source streaming to a destination that quit fails at its next write (measured on 10.0.2:
    "Unable to write to socket: Broken pipe"; 7.2.22 had not connected yet: "Failed to connect ...")."""
    _kill(vm, 0, "")
    m = scene.source.migration
    if vm is scene.destination and m is not None and m.transport in SOCKET_TRANSPORTS and m.failure is None:
        m.failure = ("Unable to write to socket: Broken pipe", None)
        m.fails_when_active = True


# The source's error-desc when the destination drops the connection mid-stream. Racy: "Broken pipe" and
# "Connection reset by peer" both occur (docs/real-qemu-facts.md#harness-runs); the latter is the more common.
PEER_RESET = "Unable to write to socket: Connection reset by peer"
RETURN_PATH_CLOSED = "Unable to write to socket: Bad file descriptor"
# source_process_command (migration/migration.c) on MIG_RP_MSG_SHUT with a non-zero error from the destination.
SIBLING_ERROR = "Sibling indicated error 1"


def _stream_mismatch(source: Machine, destination: Machine) -> tuple[str | None, str | None] | None:
    """Failures from caps the source sets but the destination lacks (measured by the harness sweep).

    - compress (<= 9.0) without compress on the destination: it cannot parse the compressed pages and exits;
      the source fails writing (7.2.22, 12 of 12 pairs failed; the error text varies with the race).
    - x-colo (8.0+): after precopy the source fails and the destination goes away (10.0.2, 2 of 2 pairs).
      7.2.22 instead enters COLO on both sides: see finish().
    """
    caps = source.caps
    return_path = "return-path" in caps or "postcopy-ram" in caps
    if "compress" in caps and "compress" not in destination.caps:
        # With a return path open, the return-path thread shuts the stream first: the main thread's next write
        # fails with EBADF (7.2.22 sweep 2026-11-25 23:07: 15 of 15 pairs with postcopy-ram or return-path).
        return (RETURN_PATH_CLOSED if return_path else PEER_RESET, None)
    if "x-colo" in caps and source.vn >= N8_0:
        # 10.0.2 sweep 23:07: with a return path the source reports the destination's error message
        # (11 of 11 pairs: "Sibling indicated error 1"); with multifd the channel setup fails first (1 pair).
        if return_path:
            return (SIBLING_ERROR, None)
        if "multifd" in caps:
            return ("ram_save_setup failed: Input/output error", None)
        return (PEER_RESET, None)
    return None


def _pause_before_switchover(scene: Scene, vm: Machine, m: Migration, peer: Machine) -> bool:
    """pause-before-switchover parks the migration in pre-switchover (migration_maybe_pause) until
    migrate-continue, with the VM stopped for switchover. The executor's wait ends there (harness/pair.py
    PARKED_STATUSES); measured on both versions: source pre-switchover / finish-migrate, destination active /
    inmigrate. It comes before COLO (7.2.22 sweep: pbs + x-colo)."""
    if "pause-before-switchover" not in vm.caps or m.background or m.continued:
        return False
    if vm.status == "pre-switchover":
        return True
    if vm.status == "setup":
        emit(vm, "active")
    emit(vm, "pre-switchover")
    vm.runstate = "finish-migrate"
    if m.transport in SOCKET_TRANSPORTS and peer.alive and peer.runstate == "inmigrate" and peer.incoming:
        emit(peer, "active")
    return True


def migrate_continue(vm: Machine) -> str | None:
    """``qmp_migrate_continue(state=pre-switchover)``: the status must be the one named (measured with no
    migration: "Migration not in expected state: none"); the migration then goes on (migration_maybe_pause
    moves pre-switchover -> device on both 7.2 and 10.0), resolved by the next wait."""
    if vm.status != "pre-switchover" or vm.migration is None:
        return f"Migration not in expected state: {vm.status}"
    vm.migration.continued = True
    return None


def _mib(size: str) -> float | None:
    """-m SIZE in MiB, None for a size the parser does not read (two such sizes are taken as equal)."""
    try:
        return parse_mib(size)
    except ValueError:
        return None


def _config_mismatch(source: Machine, destination: Machine) -> str | None:
    """A destination configured unlike the source cannot load its stream (qemu_loadvm_state, exit 1):
    - another RAM size: ram_load_precopy "Length mismatch" for the RAM block -> EINVAL;
    - a device the source has and the destination lacks: "Unknown savevm section or instance" -> EINVAL;
    - an unmigratable device on the destination: qemu_loadvm_state starts with qemu_savevm_state_blocked.
    Measured on 10.0.2 and 7.2.22 over exec (precopy-memory-mismatch, precopy-device-mismatch,
    unmigratable-savevm-load-destination): "load of migration failed: Invalid argument", source completed.
    A device only on the destination that is migratable is assumed harmless (its state just is not sent).
    """
    if _mib(source.memory) != _mib(destination.memory):
        return DESTINATION_LOAD_FAILURE
    if destination.blockers.unmigratable:
        return DESTINATION_LOAD_FAILURE
    remaining = [d.driver for d in destination.devices]
    for device in source.devices:
        if device.driver not in remaining:
            return DESTINATION_LOAD_FAILURE
        remaining.remove(device.driver)
    return None


def _load_failure(source: Machine, destination: Machine, m: Migration) -> str | None:
    """Why the destination cannot load a file/exec stream the source completed (harness sweep; the
    destination exits 1 with "load of migration failed: ..."):
    - compress on the source only (7.2.22): Invalid argument;
    - x-colo on the source (10.0.2; 8.0+ assumed): Invalid argument;
    - a background snapshot written with mapped-ram (10.0.2): Operation not permitted.
    """
    caps = source.caps
    mismatch = _config_mismatch(source, destination)
    if mismatch is not None:
        return mismatch
    # mapped-ram + x-ignore-shared: QEMU means the file to load (ram_save_setup writes each block's GPA, then
    # its mapped-ram header). Real 10.0.2 fails the load with EINVAL because parse_ramblock returns after
    # parse_ramblock_mapped_ram without reading the GPA: a known QEMU bug (harness/known_bugs.py,
    # docs/qemu-bugs.md "9."), not a prediction.
    if "compress" in caps and "compress" not in destination.caps:
        return DESTINATION_LOAD_FAILURE
    if "x-colo" in caps and source.vn >= N8_0:
        return DESTINATION_LOAD_FAILURE
    return None


def finish(scene: Scene, vm: Machine) -> None:
    """The contract's ``wait``: resolve the migration ``vm`` started, on both sides."""
    m = vm.migration
    if m is None:
        return
    peer = scene.destination if vm is scene.source else scene.source
    if m.failure is None and m.transport in SOCKET_TRANSPORTS and peer.alive and peer.runstate == "inmigrate":
        m.failure = _stream_mismatch(vm, peer)
        m.fails_when_active = m.failure is not None
    if m.failure is None and _pause_before_switchover(scene, vm, m, peer):
        return
    if m.failure is None and not m.background and m.transport not in SOCKET_TRANSPORTS and (
        "return-path" in vm.caps or "postcopy-ram" in vm.caps
    ):
        # A return path (return-path, or postcopy-ram which opens one) over a one-way channel (harness sweep):
        # file: (10.0.2) fails reading it, "Unable to read from file: Bad file descriptor", VM left running;
        # exec: waits for it forever, stopped for switchover in device (10.0.2) / active (7.2.22): timeout.
        if m.transport == "file" and "switchover-ack" not in vm.caps:
            m.failure = ("Unable to read from file: Bad file descriptor", None)
            # 10.0.2 (sweep 23:07, events on): setup, active, device, failed: the read fails at switchover.
            m.fails_when_active = True
            m.fails_after = ("device",) if vm.vn >= N10_0 else ()
        elif m.transport == "file":
            # switchover-ack: the source waits in active for the ack that never comes over a file (10.0.2 sweep
            # 23:07: timeout, last seen active, runstate running).
            if vm.status == "setup":
                emit(vm, "active")
            scene.extra["timeout"] = wait_timed_out(SOURCE_MIGRATION_END, DEFAULT_WAIT_TIMEOUT_S, "active")
            return
        else:
            if vm.status == "setup":
                emit(vm, "active")
            if vm.vn >= N10_0:
                emit(vm, "device")
            vm.runstate = "finish-migrate"
            scene.extra["timeout"] = wait_timed_out(SOURCE_MIGRATION_END, DEFAULT_WAIT_TIMEOUT_S, vm.status)
            return
    # 7.2.22 background-snapshot + block over tcp hung the source's monitor once (harness sweep) and completed
    # in the 23:07 sweep: a race (docs/qemu-bugs.md), the model predicts completion.
    if "x-colo" in vm.caps and vm.vn < N8_0 and m.failure is None and not m.background and not m.postcopy:
        # 7.2.22: after precopy both sides enter COLO and stay there; the executor's wait times out (measured:
        # source colo/running, destination colo/running). After a postcopy switch there is no COLO: the
        # migration completes (sweep 23:07, 13 of 13 pairs). With a return path (return-path, postcopy-ram) the
        # source's return-path thread fails on COLO's first message (2 of 2 pairs): "RP: Received invalid
        # message 0x0000 length 0x0000", source failed/running, the destination stays in COLO.
        if ("return-path" in vm.caps or "postcopy-ram" in vm.caps) and m.transport in SOCKET_TRANSPORTS:
            if vm.status == "setup":
                emit(vm, "active")
            emit(vm, "failed")
            vm.error_desc = "RP: Received invalid message 0x0000 length 0x0000"
            vm.migration = None
            if peer.alive and peer.runstate == "inmigrate" and peer.incoming:
                emit(peer, "active")
                emit(peer, "colo")
                peer.runstate = incoming_runstate(m.source_runstate, peer.autostart)
            return
        for status in ("active", "colo"):
            if vm.status != status:
                emit(vm, status)
        if m.transport not in SOCKET_TRANSPORTS:
            vm.runstate = "finish-migrate"  # measured over exec: the VM is not restarted
        if m.transport in SOCKET_TRANSPORTS and peer.alive and peer.runstate == "inmigrate" and peer.incoming:
            emit(peer, "active")
            emit(peer, "colo")
            peer.runstate = incoming_runstate(m.source_runstate, peer.autostart)
        scene.extra["timeout"] = wait_timed_out(SOURCE_MIGRATION_END, DEFAULT_WAIT_TIMEOUT_S, "colo")
        return
    vm.migration = None
    if m.failure is not None:
        desc, line = m.failure
        if m.fails_when_active and vm.status == "setup":
            emit(vm, "active")
        for status in m.fails_after:
            emit(vm, status)
        emit(vm, "failed")
        vm.error_desc = desc
        if line is not None:
            scene.extra.setdefault("source_stderr", line)
        if m.transport in SOCKET_TRANSPORTS and peer.alive and peer.runstate == "inmigrate" and peer.incoming:
            emit(peer, "active")
            status, line = m.peer_exit
            if status == 1:
                emit(peer, "failed")
            _kill(peer, status, line)
        return
    path = _source_path(vm.vn, m)
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
    # The executor loads a file into the destination once the source completed (file:F / exec:cat F).
    if m.transport not in SOCKET_TRANSPORTS:
        if migrate_incoming(peer, m.transport) is not None:
            return
        load_error = _load_failure(vm, peer, m)
        if load_error is not None:
            emit(peer, "active")
            emit(peer, "failed")
            _kill(peer, 1, load_error)
            return
    emit(peer, "active")
    if m.postcopy and not m.background:
        # postcopy_ram_listen_thread: postcopy-active -> completed, then migration_incoming_state_destroy.
        # 7.2 accepts postcopy with multifd (rule e came in 8.1) and means it to complete like any postcopy
        # (with postcopy-preempt too); real 7.2 aborts the destination in that cleanup
        # (yank_unregister_instance: the multifd channels' yank functions are still registered): a known QEMU
        # bug (harness/known_bugs.py, docs/qemu-bugs.md "5."), not a prediction.
        emit(peer, "postcopy-active")
    emit(peer, "completed")
    peer.runstate = incoming_runstate(m.source_runstate, peer.autostart)


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
    return None


def cont(vm: Machine) -> str | None:
    """``qmp_cont``: while inmigrate it sets autostart (measured: {} and still inmigrate); else the VM runs."""
    if vm.runstate == "inmigrate":
        vm.autostart = True
    else:
        vm.runstate = "running"
    return None


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
