"""What a migration carries between QMP commands and waits, and the primitives every part of the model uses.

The QMP commands (reference_impl.migration, reference_impl.migration_prechecks) start and steer a migration; the
contract's ``wait`` (reference_impl.migration_wait) resolves it. Both read and change the state kept here: the
source's :class:`Migration`, the statuses each side reports (``migrate_set_state``) and the runstate a destination
ends in (``process_incoming_migration_bh``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract import messages
from contract.messages import SOURCE_MIGRATION_END, vm_exited
from contract.policy import DEFAULT_WAIT_TIMEOUT_S
from reference_impl.loadvm import DESTINATION_LOAD_FAILURE
from reference_impl.machine import Machine

SOCKET_TRANSPORTS = frozenset({"tcp", "unix"})


@dataclass
class Migration:
    """An outgoing migration that ``migrate`` accepted (source side)."""

    transport: str
    background: bool  # background-snapshot
    source_runstate: str  # runstate when migrate ran: decides the destination's runstate
    left_setup: bool = False  # a step waited for the migration to leave setup (start-postcopy, cancel)
    # How the destination ends when the migration fails: (exit status, last stderr line).
    peer_exit: tuple[int, str] = (1, DESTINATION_LOAD_FAILURE)
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
    # The destination dropped the connection at accept (its own tls-creds failed, 7.2: it stays listening).
    peer_refused: bool = False
    # Started by a raw qmp migrate to the scenario's URI: the executor neither waits for it to leave setup nor
    # loads a file/exec stream it wrote into the destination.
    raw: bool = False


@dataclass
class Scene:
    """Both VMs and what the scenario has set up between them."""

    source: Machine
    destination: Machine
    socket_uri: bool = False  # migrate-incoming tcp/unix done (later migrates reuse the URI)
    # A raw migrate's asynchronous connect failure may not have landed before the next step (qmp_commands).
    connect_race: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def emit(vm: Machine, status: str) -> None:
    """``migrate_set_state``: the status changes; MIGRATION is sent only with cap ``events`` on. A status the VM
    is already in sends nothing (QEMU never moves a state to itself: found with a destination that a parked
    pre-switchover had left active, measured on 10.0.2 and 10.2.2)."""
    if vm.status == status:
        return
    vm.status = status
    if "events" in vm.caps:
        vm.events.append(status)


def kill(vm: Machine, status: int, line: str) -> None:
    """The VM's QEMU exits with ``status``; ``line`` is its last stderr line (the executor's error text)."""
    vm.alive = False
    vm.exit_line = vm_exited(vm.role, status, line)


def reads_stream(m: Migration, peer: Machine) -> bool:
    """The destination is reading ``m``'s socket stream (alive, still incoming, migrate-incoming done): only
    then does it see what happens to the stream."""
    return (
        m.transport in SOCKET_TRANSPORTS
        and not m.peer_refused
        and peer.alive
        and peer.runstate == "inmigrate"
        and bool(peer.incoming)
    )


def incoming_runstate(source_runstate: str, autostart: bool) -> str:
    """``process_incoming_migration_bh``: a live source makes the destination run (paused without autostart);
    otherwise the destination takes the source's runstate (measured: prelaunch -> prelaunch, paused -> paused)."""
    if source_runstate == "running":
        return "running" if autostart else "paused"
    return source_runstate


def left_setup(vm: Machine) -> None:
    """The executor's bounded wait for the migration to leave setup (before start-postcopy and cancel)."""
    m = vm.migration
    if m is not None and not m.left_setup and not m.raw:  # the executor waits only for its own migrate step's
        m.left_setup = True
        if vm.status == "setup":
            emit(vm, "active")


def wait_timed_out(last_seen: str) -> str:
    """The executor's error when its wait for the source's migration reaches the bound."""
    return messages.wait_timed_out(SOURCE_MIGRATION_END, DEFAULT_WAIT_TIMEOUT_S, last_seen)
