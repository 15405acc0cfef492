"""The TLS migration parameters (``tls-creds``, ``tls-authz``, ``tls-hostname``): where QEMU refuses them.

migrate-set-parameters stores the three strings without looking anything up (migrate_params_check has no TLS
rule; qmp_migrate_set_parameters only rewrites a JSON null to ""; 7.2.22, 10.0.2 and 10.2.2's
migration/options.c, 7.2's migration/migration.c). The lookup happens when a channel is set up
(migrate_channel_requires_tls_upgrade: ``tls-creds`` non-empty), in migration_tls_get_creds
(migration/tls.c, same text in 7.2, 10.0 and 10.2):

- outgoing (migration_channel_connect -> migration_tls_channel_connect -> migration_tls_client_create), once the
  socket is connected or the file/exec channel opened: "No TLS credentials with id '<id>'" when /objects has no
  such child, "Object with id '<id>' is not TLS credentials" when the object is not a TLS credentials type.
  migration_channel_connect hands the error to migrate_fd_connect (7.2) / migration_connect (10.x): the source
  fails in setup, error-desc the text;
- incoming (migration_channel_process_incoming -> migration_tls_channel_process_incoming) on accept: the same
  texts; 7.2-9.2 only report them and keep listening (migration_channel_process_incoming read in 7.2.22, 8.0.0,
  8.1.0, 8.2.0, 9.0.0, 9.1.0 and 9.2's soft freeze), 10.0+ moves the (outgoing) state to failed and exits 1
  (mis->exit_on_error, default true; commit "migration: Fix hang after error in destination setup phase",
  posted in December 2024 and merged for 10.0).

``tls-authz`` and ``tls-hostname`` are read only after the credentials resolved (qio_channel_tls_new_server /
migration_tls_client_create), so without ``tls-creds`` they change nothing. Real credentials objects
(tls-creds-anon/-psk/-x509) depend on the build (a QEMU without GNUTLS refuses to create them: "TLS credentials
support requires GNUTLS", measured on the 10.2.2 build) and on the handshake: not modelled. Measured on 7.2.22,
10.0.2 and 10.2.2: docs/real-qemu-facts.md, "QMP surface".
"""

from __future__ import annotations

from reference_impl.capabilities import N10_0, N10_2
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.migration_state import Scene, emit, kill, reads_stream

# qom-types that are TLS credentials (TYPE_QCRYPTO_TLS_CREDS subclasses, crypto/tlscreds*.c).
TLS_CREDS_TYPES = frozenset({"tls-creds-anon", "tls-creds-psk", "tls-creds-x509"})

# The destination's last stderr line when the source's channel closes before any byte: 7.2/10.0 read the
# stream header ("Not a migration stream", then this line); 10.2's migration_ioc_process_incoming peeks the
# channel magic first and fails with "Failed to peek at channel" (measured, tls-creds-missing).
EOF_BEFORE_HEADER = "load of migration failed: Invalid argument"
EOF_BEFORE_PEEK = "Failed to peek at channel"


def tls_creds(vm: Machine) -> str:
    """``migrate_tls_creds()``: "" means no TLS."""
    value = vm.params.get("tls-creds", "")
    return value if isinstance(value, str) else ""


def creds_error(vm: Machine) -> str | None:
    """migration_tls_get_creds for ``vm``'s ``tls-creds`` (set): its error, or NotModelled for real credentials."""
    creds = tls_creds(vm)
    qom_type = vm.objects.get(creds)
    if qom_type is None:
        return f"No TLS credentials with id '{creds}'"
    if qom_type in TLS_CREDS_TYPES:
        raise NotModelled(f"migration over TLS with a {qom_type} object (endpoint check, GNUTLS, handshake)")
    return f"Object with id '{creds}' is not TLS credentials"


def outgoing_error(vm: Machine) -> str | None:
    """The source's channel setup with ``tls-creds`` set: the error that fails the migration in setup."""
    if not tls_creds(vm):
        return None
    return creds_error(vm)


def incoming_refuses(vm: Machine) -> bool:
    """Whether a destination with ``tls-creds`` set refuses the connection it accepts (see the module doc).

    Before 10.0 the error is only reported (7.2.22 measured: still inmigrate, listening; 8.0-9.2 read: the same
    migration_channel_process_incoming and migration_tls_channel_process_incoming); 10.0 exits 1."""
    if not tls_creds(vm):
        return False
    creds_error(vm)
    return True


def incoming_exits(vm: Machine) -> bool:
    """A destination that refused its TLS channel exits (10.0+: migration_channel_process_incoming)."""
    return vm.vn >= N10_0


def eof_line(vm: Machine) -> str:
    """The destination's last line when the source's channel closed before the stream header."""
    return EOF_BEFORE_PEEK if vm.vn >= N10_2 else EOF_BEFORE_HEADER


def connect(scene: Scene) -> None:
    """What the destination does with the socket connection of the migration ``migrate`` just started.

    - The destination has ``tls-creds`` (it refuses at accept, see :func:`incoming_refuses`): 10.0+ exits 1
      with its lookup error, 7.2 keeps listening and never reads the stream. A source without a TLS error of
      its own then writes into the dropped connection: it failed ("Unable to write to socket: Broken pipe")
      in two runs of three on 10.0.2 and completed in the third (a small VM's stream fits in the socket
      buffers before the reset arrives): a race, not modelled.
    - Only the source's TLS lookup failed: it closes the connection before any byte, and the destination fails
      reading the stream header and exits 1 (:func:`eof_line`).
    """
    src, dst = scene.source, scene.destination
    m = src.migration
    if m is None or not reads_stream(m, dst):
        return
    source_error = outgoing_error(src)
    if incoming_refuses(dst):
        if source_error is None and m.failure is None:
            raise NotModelled("a plain source sending to a destination that refused its TLS channel (a race)")
        m.peer_refused = True
        if incoming_exits(dst):
            emit(dst, "failed")
            kill(dst, 1, creds_error(dst) or "")
    elif source_error is not None:
        m.peer_exit = (1, eof_line(dst))
