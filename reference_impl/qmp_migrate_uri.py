"""The raw ``migrate`` and ``migrate-incoming`` commands with a URI: qmp_migrate / qmp_migrate_incoming after their
arguments' own checks (reference_impl.qmp_migrate_args), then the URI's parse and the transport's start, in the
order each version runs them. Apart from reference_impl.qmp_commands because the URI's path through QEMU
(migrate_uri_parse, socket_parse, file_parse_offset, the transports' start functions) is its own subject, and
differs most between versions. Texts measured on 7.2.22, 10.0.2 and 10.2.2 (docs/real-qemu-facts.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from reference_impl import migration as mig
from reference_impl import qmp_migrate_args as migrate_args
from reference_impl import uri_parse
from reference_impl.capabilities import N8_0, N8_2, N9_1
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.migration_prechecks import transport_check

# URI schemes qmp_migrate dispatches on (migration/migration.c); anything else is not a migration protocol.
URI_SCHEMES = frozenset({"tcp", "unix", "file", "exec", "fd", "rdma", "vsock"})
# Of those, the ones the model follows: rdma needs an RDMA device (and a build with it), vsock a vsock
# transport; their failure texts come from code the model does not mirror. fd: is followed as far as the
# harness can take it: no descriptor is ever passed (getfd), so the name is not found (reference_impl.uri_parse).
MODELLED_SCHEMES = frozenset({"tcp", "unix", "file", "exec", "fd"})


def _file_open_error(vm: Machine, path: str, verb: str) -> str:
    """qio_channel_file_new_path failing on a missing file or folder: 8.2/9.0 call qemu_open_old and say "Unable
    to open <path>" (io/channel-file.c of 8.2.0 and 9.0.0); 9.1+ call qemu_open / qemu_create, whose error names
    the verb and quotes the path (commit 46cec74c1b "io: Stop using qemu_open_old in channel-file", June 2024)."""
    if vm.vn < N9_1:
        return f"Unable to open {path}: No such file or directory"
    return f"Could not {verb} '{path}': No such file or directory"


def migrate_uri(vm: Machine, uri: str) -> str | None:
    """``qmp_migrate`` with a URI chosen by the scenario (not by the executor).

    - 8.2+ parses the URI first (migrate_uri_parse): an unknown scheme is refused with status none
      ("unknown migration protocol: bogus:x", measured on 10.0.2). Before 8.2 the dispatch comes after
      migrate_init: "Parameter 'uri' expects a valid migration protocol" and setup -> failed (7.2.22).
    - file: whose directory does not exist: the open fails after migrate_init ("Could not create '<path>':
      No such file or directory", status failed, measured on 10.0.2; 8.2/9.0: :func:`_file_open_error`).
    - unix: to a path that does not exist: accepted, then "Failed to connect to '<path>': No such file or
      directory" (measured on both); tcp: nobody listens (the executor never listens on a URI it did not make).
    The model asks the host filesystem whether the path exists, as QEMU's open/connect would.
    """
    scheme, _, target = uri.partition(":")
    if scheme in URI_SCHEMES and scheme not in MODELLED_SCHEMES:
        raise NotModelled(f"migrate URI scheme {scheme!r}")
    if scheme not in URI_SCHEMES and vm.vn >= N8_2:
        return f"unknown migration protocol: {uri}"
    transport = scheme if scheme in URI_SCHEMES else "invalid"
    start_error = _address_error(vm, scheme, target)
    if start_error is not None and vm.vn >= N8_2:
        return start_error  # migrate_uri_parse, before migrate_prepare: nothing changes
    path_error = None
    # The path is the scenario's, not the run's: QEMU prints it as given and the model predicts it literally
    # (harness.compare keeps a path the model wrote, and normalises only the others).
    path = uri_parse.file_offset(target)[0] if scheme == "file" else target
    if scheme == "file" and not os.path.isdir(os.path.dirname(path) or "."):
        path_error = _file_open_error(vm, path, "create")
    elif scheme == "file" and vm.vn >= N8_2 and os.path.exists(path) and not os.path.isfile(path):
        if not stat.S_ISCHR(os.stat(path).st_mode):
            raise NotModelled(f"migrate to file: {path!r}, which is not a regular file")
        # file_start_outgoing_migration ftruncates whatever it opened, even to 0: a device (/dev/null) gives
        # EINVAL (measured on 10.0.2 and 10.2.2 with file:/dev/null,offset=0x1000; status failed).
        offset = uri_parse.file_offset(target)[1] or 0
        path_error = f"failed to truncate migration file to offset {offset:x}: Invalid argument"
    elif scheme == "unix" and start_error is None and not os.path.exists(target):
        path_error = f"Failed to connect to '{target}': No such file or directory"
    elif scheme == "fd" and start_error is None:
        # fd_start_outgoing_migration: monitor_get_fd fails after migrate_init; migrate_fd_error: setup -> failed.
        start_error = uri_parse.fd_lookup_error(target)
    error = mig.migrate(vm, transport, peer_listening=False, path_error=path_error, start_error=start_error)
    if error is None and scheme == "exec":
        # Accepted, with the scenario's own command: what it does with the stream (exits at once, writes it
        # somewhere) is the command's (measured with exec:true: 7.2.22 "Unable to write to command: Broken
        # pipe", 10.x "ram_save_setup failed: Input/output error").
        # Even a command that drains the stream (exec:cat > /dev/null, completed on 7.2.22, 10.0.2 and 10.2.2)
        # ends on its own time: the executor's wait watches only its own migrate step's migration.
        raise NotModelled("migrate to exec: with the scenario's own command")
    if error is None and vm.migration is not None:
        vm.migration.raw = True
    return error


def _address_error(vm: Machine, scheme: str, target: str) -> str | None:
    """The URI's address refused by its parser (reference_impl.uri_parse): 8.2+ in migrate_uri_parse, 7.2-8.1 in
    socket_start_{outgoing,incoming}_migration's socket_parse, after migrate_init / the incoming setup event (8.0.0
    c1eb2ddf0f80 and 8.1.0 7e5a8bb22368 have 7.2's migration/socket.c, socket_parse and inet_parse)."""
    # 7.2-8.1 hand fd: names straight to the monitor lookup (no socket_parse): "fd:" is an unknown '' there.
    error = None if scheme == "fd" and vm.vn < N8_2 else uri_parse.socket_address_error(scheme, target)
    if error is None and scheme == "file" and vm.vn >= N8_2:
        error = uri_parse.file_offset(target)[2]
    return error


def migrate_command(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate`` with the scenario's arguments (reference_impl.qmp_migrate_args), then the URI model.

    ``resume`` on 10.0+: the URI parse (migrate_uri_parse) and migration_channels_and_transport_compatible
    come before migrate_prepare's "Cannot resume if there is no paused migration" (measured with bogus:x:
    10.0.2 and 10.2.2 "unknown migration protocol: bogus:x", 7.2.22 the resume refusal)."""
    error, uri = migrate_args.migrate(vm, arguments)
    if error is not None or uri is None:
        return error
    if arguments.get("resume") is True:
        scheme = uri.partition(":")[0]
        if scheme not in URI_SCHEMES:
            return f"unknown migration protocol: {uri}"
        if scheme not in MODELLED_SCHEMES:
            raise NotModelled(f"migrate URI scheme {scheme!r}")
        if vm.params.get("mode", "normal") != "normal":
            raise NotModelled("migrate resume in a CPR mode")
        return transport_check(vm, scheme) or migrate_args.NO_PAUSED_MIGRATION
    return migrate_uri(vm, uri)


def migrate_incoming_command(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_migrate_incoming``: QAPI's refusals, then the 'once' flag and the runstate, then the arguments'
    own checks (qemu_start_incoming_migration)."""
    error = migrate_args.incoming_qapi_error(vm, arguments)
    if error is not None:
        return error
    if vm.incoming is not None or vm.runstate != "inmigrate":
        return mig.migrate_incoming(vm, "tcp")
    error, uri = migrate_args.migrate_incoming(vm, arguments)
    if error is not None or uri is None:
        return error
    return migrate_incoming_uri(vm, uri)


def migrate_incoming_uri(vm: Machine, uri: str) -> str | None:
    """``qmp_migrate_incoming`` with the scenario's URI (see migration.migrate_incoming): the 'once' flag and the
    runstate first, then qemu_start_incoming_migration. Measured on 7.2.22 and 10.0.2 (docs/real-qemu-facts.md,
    "QMP breadth"):

    - an unknown scheme (and file: before 8.2): "unknown migration protocol: <uri>"; 8.2+ refuses it in
      migrate_uri_parse before any state change, 7.2-8.1 after sending MIGRATION setup (status stays none; read
      in 8.0.0's and 8.1.0's qemu_start_incoming_migration);
    - unix: to a folder that does not exist: "Failed to bind socket to <path>: No such file or directory",
      file: (8.2+) that cannot be opened: "Could not open '<path>': No such file or directory" (8.2/9.0: "Unable
      to open <path>: ...", :func:`_file_open_error`); both after the
      incoming setup (10.0: status setup).
    exec: is accepted as before; a file: that exists would be loaded at once (not modelled).
    """
    scheme, _, target = uri.partition(":")
    if scheme in URI_SCHEMES and scheme not in MODELLED_SCHEMES:
        raise NotModelled(f"migrate-incoming URI scheme {scheme!r}")
    if vm.incoming is not None or vm.runstate != "inmigrate":
        return mig.migrate_incoming(vm, scheme)
    if scheme not in URI_SCHEMES or (scheme == "file" and vm.vn < N8_2):
        if vm.vn >= N8_2:
            return f"unknown migration protocol: {uri}"
        # 7.2-8.1 qemu_start_incoming_migration: the MIGRATION setup event is sent before the dispatch (8.0/8.1
        # first refuse a URI that multifd or postcopy-preempt cannot use: migration_channels_and_uri_compatible).
        error = transport_check(vm, "invalid") if vm.vn >= N8_0 else None
        if error is not None:
            return error
        vm.events.append("setup")
        return f"unknown migration protocol: {uri}"
    error = _address_error(vm, scheme, target)
    if error is not None:
        if vm.vn < N8_2:
            vm.events.append("setup")  # 7.2-8.1: qemu_start_incoming_migration sends it before the transport
        return error
    if scheme == "fd":
        return mig.migrate_incoming(vm, "fd", dispatch_error=uri_parse.fd_lookup_error(target))
    if scheme == "file":
        path = target.split(",")[0]
        if os.path.exists(path):
            raise NotModelled("migrate-incoming of an existing file (the destination loads it at once)")
        return mig.migrate_incoming(vm, "file", dispatch_error=_file_open_error(vm, path, "open"))
    if scheme == "unix" and not os.path.isdir(os.path.dirname(target) or "."):
        error = f"Failed to bind socket to {target}: No such file or directory"
        return mig.migrate_incoming(vm, "unix", dispatch_error=error)
    return mig.migrate_incoming(vm, scheme)
