"""``migrate`` and ``migrate-incoming``: the checks QEMU runs before a migration starts, in QEMU's order.

Pre-checks run in QEMU's order (qmp_migrate, migrate_prepare: docs/real-qemu-facts.md migrate-order; measured in
docs/real-qemu-facts.md#checks). Each function mirrors a QMP command handler and returns QEMU's error text or
None; a migration ``migrate`` accepts is resolved by the contract's wait (reference_impl.migration_wait).
"""

from __future__ import annotations

from reference_impl import qmp_tls
from reference_impl.capabilities import IN_PROGRESS, N8_0, N8_1, N8_2, N9_0, N10_0
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.migration_state import SOCKET_TRANSPORTS, Migration, emit
from reference_impl.savevm import PrepareContext, qemu_savevm_state_prepare

# Schemes qmp_migrate dispatches on before 8.2 (no file:); others fail after migrate_init.
VVFAT_RW = "The vvfat (rw) format used by node"
_PRE_8_2_SCHEMES = frozenset({"tcp", "unix", "exec", "fd", "rdma", "vsock"})


def migrate_incoming(vm: Machine, transport: str, *, dispatch_error: str | None = None) -> str | None:
    """``qmp_migrate_incoming`` on the destination (started with ``-incoming defer``).

    8.2+ moves the incoming state none -> setup here (migrate_set_state: an event only with cap events; commit
    4111a732e8 "migration: Set migration status early in incoming side", October 2023, after 8.1.0); 7.2-8.1
    keep query-migrate empty but send MIGRATION setup unconditionally (qemu_start_incoming_migration, read in
    7.2.22, 8.0.0, 8.1.0). Measured on 7.2.22 and 10.0.2 (docs/real-qemu-facts.md#flow-precopy).
    ``dispatch_error``: the transport's start fails after that (a unix path whose folder does not exist, a
    file that cannot be opened): the error, with the setup already done and the 'once' flag still unset.
    """
    if vm.incoming is not None:
        return "The incoming migration has already been started"
    if vm.runstate != "inmigrate":
        return "'-incoming' was not specified on the command line"
    if vm.vn < N8_2 and transport == "file":
        if vm.vn < N8_0:
            # 7.2's qemu_start_incoming_migration sends MIGRATION setup before it dispatches on the scheme.
            vm.events.append("setup")
        return "unknown migration protocol: file:<FILE>"
    if vm.vn >= N8_0:
        # qemu_start_incoming_migration checks the channels against the caps like migrate does (measured on
        # 10.0.2 by the harness sweep: mapped-ram + tcp refused with the seekable message, status stays none).
        error = transport_check(vm, transport)
        if error is not None:
            return error
    if vm.vn >= N8_2:
        emit(vm, "setup")
    else:
        vm.events.append("setup")
    if dispatch_error is not None:
        return dispatch_error
    vm.incoming = transport
    vm.incoming_caps = vm.caps
    return None


def transport_check(vm: Machine, transport: str) -> str | None:
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


def migrate(
    vm: Machine,
    transport: str,
    *,
    peer_listening: bool = True,
    path_error: str | None = None,
    start_error: str | None = None,
) -> str | None:
    """``qmp_migrate`` + ``migrate_prepare`` + ``migrate_init``: the error, or None once the migration started.

    Refusals before migrate_init change nothing (status, error-desc and runstate stay; no event).
    ``path_error``: the target path of a scenario-chosen URI cannot be opened (file: refused after
    migrate_init, setup -> failed; unix: the connect fails asynchronously with this error-desc).
    ``start_error``: the transport's start refuses the address after migrate_init (7.2's socket_parse, an fd:
    name monitor_get_fd does not know): migrate_fd_error moves setup -> failed and the command is refused.
    """
    v = vm.vn
    caps = vm.caps
    if v >= N8_0:
        error = transport_check(vm, transport)
        if error is not None:
            return error
    mode = vm.params.get("mode", "normal")
    if mode == "cpr-transfer":
        # qmp_migrate (10.0.2, 10.2.2): a uri, or channels without a cpr entry, is refused after the transport
        # check and before migrate_prepare (measured on both: status unchanged).
        return "missing 'cpr' migration channel"
    if mode == "cpr-exec":
        raise NotModelled("migrate in mode cpr-exec")
    # migrate_prepare (migration/migration.c).
    if vm.migration is not None:
        return IN_PROGRESS
    if vm.runstate == "inmigrate":
        return "Guest is waiting for an incoming migration"
    if vm.runstate == "postmigrate":
        return "Can't migrate the vm that was paused due to previous migration"
    # migration_is_blocked reads migration_blockers[migrate_mode()]: the block formats' blockers are added with
    # migrate_add_blocker_normal from 8.2 (the first release with a mode) on, read in 8.2.0 1600b9f46b1b, 9.0.0
    # c25df57ae8f9, 9.1.0 fd1952d814da, 9.2's soft freeze daaf51001a13 (block/vvfat.c, vmdk.c, vdi.c, vhdx.c,
    # vpc.c, qcow.c, parallels.c; add_blockers and migration_is_blocked as in 10.0.2).
    blocked = vm.blockers.is_blocked(str(vm.params.get("mode", "normal")))
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
        for cap, what in (
            ("postcopy-ram", "postcopy"),
            ("background-snapshot", "background snapshot"),
            ("x-colo", "COLO"),
        ):
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
        if v == N8_1:
            # 8.1's qmp_migrate sets this error in a local Error it never propagates (commit 908927db28
            # "migration: Update error description whenever migration fails" switched errp to &local_err and
            # kept the ``return``; f4e1b61336 dropped the ``return`` for 8.2): migrate answers success, status
            # failed, no error-desc. Read in v8.1.0 (7e5a8bb22368) and the v8.1.1-v8.1.4 tags; 8.1.5 not read.
            return None
        return "Parameter 'uri' expects a valid migration protocol"
    if start_error is not None:
        emit(vm, "failed")
        vm.error_desc = start_error
        return start_error
    if path_error is not None and transport == "file":
        # file_start_outgoing_migration: the open fails, migrate_fd_error moves setup -> failed (10.0.2).
        emit(vm, "failed")
        vm.error_desc = path_error
        return path_error
    if "x-ignore-shared" in caps and vm.ram_backend:
        # Two processes never share the backend, so the destination starts from its own empty RAM; what fails
        # then depends on how far the firmware ran before migrate (7.2.22: the vapic's kvm-tpr-opt post_load
        # gave EPERM in some runs, not others; docs/real-qemu-facts.md, "Races").
        raise NotModelled("x-ignore-shared with the guest RAM on a memory backend (the load depends on the firmware)")
    migration = Migration(transport=transport, background="background-snapshot" in caps, source_runstate=vm.runstate)
    if v < N8_0 and transport not in SOCKET_TRANSPORTS and "multifd" in caps:
        # 7.2 has no transport check at migrate time: the outgoing side fails in setup and prints this line
        # without a program prefix; status failed with no error-desc (measured, #slots-and-buses).
        migration.failure = (None, "multifd is not supported by current protocol")
    elif v < N8_0 and transport not in SOCKET_TRANSPORTS and "postcopy-preempt" in caps:
        migration.failure = (None, None)  # accepted then failed on 7.2.22; its stderr text was not recorded
    elif transport in SOCKET_TRANSPORTS and not peer_listening:
        desc = path_error if path_error is not None else connect_refused(transport)
        migration.failure = (desc, desc)
    elif (tls_error := qmp_tls.outgoing_error(vm)) is not None:
        # migration_channel_connect: the TLS lookup fails once the channel exists, in setup.
        migration.failure = (tls_error, tls_error)
    elif (completion := _cpr_completion_failure(vm)) is not None:
        migration.failure = (completion, completion)
        migration.fails_when_active = True
        migration.fails_after = ("device",) if v >= N10_0 else ()
    else:
        migration.failure = _vfio_failure(vm)
        # A VFIO failure comes from qemu_savevm_state_setup (ram_save_setup: the dirty-log start fails);
        # migration_thread handles setup failures only after qemu_savevm_wait_unplug moved setup -> active,
        # then active -> failed (real 10.0.2, lab: vfio-precopy-migratable events setup, active, failed).
        migration.fails_when_active = migration.failure is not None
    vm.migration = migration
    return None


def _cpr_completion_failure(vm: Machine) -> str | None:
    """A CPR mode skips the normal-mode blockers (migrate_add_blocker_normal: a rw vvfat's), but
    migration_completion_precopy still calls migration_switchover_start, whose migration_block_inactivate
    fails for a rw vvfat (bdrv_inactivate_all: -1): -EFAULT, after active -> device (10.0.2 and 10.2.2
    source, read; measured 3 of 3 on both: "Error in migration completion: Bad address", the source keeps
    its runstate). 8.2-9.2: :func:`_cpr_completion_failure_8x`."""
    if vm.params.get("mode", "normal") == "normal" or not any(VVFAT_RW in r for r in vm.blockers.reasons):
        return None
    if vm.vn < N10_0:
        return _cpr_completion_failure_8x(vm)
    return "Error in migration completion: Bad address"


def _cpr_completion_failure_8x(vm: Machine) -> str:
    """8.2-9.2 inactivate the disks in qemu_savevm_state_complete_precopy_non_iterable (migration/savevm.c),
    which sets the error first (migrate_set_error keeps the first; 9.0+'s "Error in migration completion" in
    migration_completion comes second): "<function>: bdrv_inactivate_all() failed (-1)", the -1 being 10.x's
    measured bdrv_inactivate_all value for a rw vvfat (bdrv_inactivate_recurse: the same -EPERM test). No
    device status (migration_maybe_pause passes through it only with pause-before-switchover), active ->
    failed (migration_completion_failed), and migration_iteration_finish gives back s->vm_old_state. Read in
    8.2.0 1600b9f46b1b, 9.0.0 c25df57ae8f9, 9.1.0 fd1952d814da, 9.2's soft freeze daaf51001a13 (9.0+ stop the
    VM of a CPR mode in migrate_fd_connect, migration_stop_vm, rather than in migration_completion_precopy)."""
    if "pause-before-switchover" in vm.caps:
        raise NotModelled(f"a CPR-mode migration with a rw vvfat drive and pause-before-switchover on {vm.version}")
    return "qemu_savevm_state_complete_precopy_non_iterable: bdrv_inactivate_all() failed (-1)"


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
