"""A source and a destination QEMU and the migration between them: :class:`MigrationPair`.

The pair knows transports (how a URI is chosen and how the destination gets the stream) and states (what
"the migration ended" means on each side); it does not know scenarios. Every wait is bounded and wakes
on MIGRATION events when the ``events`` capability is on, else on a short poll of ``query-migrate``, so
a result never depends on whether a scenario enabled events.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import time
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from contract.messages import DESTINATION_MIGRATION_END, SOURCE_MIGRATION_END
from contract.outcome import VmState
from harness.binaries import QemuBinary
from harness.errors import MigrationTimeout, QmpConnectionError, QmpTimeout, VmDied
from harness.listen_guard import ListenThreadGuard, needs_listen_guard
from harness.machine import DEFAULT_LAUNCH_TIMEOUT_S, QemuMachine, private_dir
from harness.procutil import process_state

# query-migrate statuses in which the migration is over (migration_is_idle's states minus none).
END_STATUSES = frozenset({"completed", "failed", "cancelled"})
# Where a source migration waits for a command, not for time: a wait ends there too.
PARKED_STATUSES = frozenset({"pre-switchover"})
# The destination's postcopy "ends" for our purposes only at completed/failed; it never cancels.
DESTINATION_END_STATUSES = frozenset({"completed", "failed"})
TRANSPORTS = ("tcp", "unix", "file", "exec")
POLL_INTERVAL_S = 0.02
SIDES = ("source", "destination")
FINAL_STATE_TIMEOUT_S = 5.0
# Bound for the pair to reach a quiescent point before its final states are read (see :func:`unsettled`).
SETTLE_TIMEOUT_S = 10.0
# Statuses QEMU leaves on its own, without another command or more data, so that a read there depends only
# on when a thread or bottom half of QEMU got the CPU: cancelling -> cancelled (migration_cleanup),
# device -> completed/failed (migration_completion), wait-unplug -> active (qemu_savevm_wait_unplug).
# A source's setup is one too (migration_thread moves it on), handled apart because a destination's is not.
TRANSIENT_STATUSES = frozenset({"cancelling", "device", "wait-unplug"})
# A destination whose incoming migration has not started: 10.0's setup (migration_incoming_state_setup at
# migrate-incoming), 7.2's none (its state stays none until process_incoming_migration_co).
INCOMING_NOT_STARTED = frozenset({"setup", "none"})
# Source statuses that exist only once the source's channel is connected: migrate_fd_connect starts
# migration_thread (which leaves setup) only on a connected channel. A destination that has the other end of
# that connection will start its incoming migration (socket_accept_incoming_migration ->
# migration_ioc_process_incoming -> process_incoming_migration_co, which sets active) as soon as its main
# loop runs; failed and cancelled are absent because a connect can fail.
CONNECTED_SOURCE_STATUSES = frozenset(
    {
        "active",
        "wait-unplug",
        "pre-switchover",
        "device",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "completed",
    }
)


def unsettled(source: VmState | None, destination: VmState | None, *, incoming: bool) -> str | None:
    """Why the pair is not at a quiescent point (a state read now would depend on scheduling), or None.

    ``incoming``: the destination has a socket incoming migration the source connects to. A quiescent point
    is one where each side stays as it is until a command, more data, or time (a throttled migration)
    moves it: the states the model predicts. A VM that is gone (None) is settled.
    """
    for side, state in (("source", source), ("destination", destination)):
        if state is None:
            continue
        if state.status in TRANSIENT_STATUSES:
            return f"the {side} is in {state.status}"
        # migration_iteration_finish sets the runstate (postmigrate, running, the old state) after the
        # status ended; only pre-switchover parks with the VM in finish-migrate.
        if state.runstate == "finish-migrate" and state.status != "pre-switchover":
            return f"the {side} is in runstate finish-migrate (status {state.status})"
    if source is not None and source.status == "setup":
        return "the source is in setup"
    if incoming and source is not None and destination is not None:
        if source.status in CONNECTED_SOURCE_STATUSES and destination.status in INCOMING_NOT_STARTED:
            return f"the destination has not started its incoming migration (source {source.status})"
        if source.status == "completed" and destination.status not in END_STATUSES:
            return f"the destination is in {destination.status} after the source completed"
        # A precopy load whose stream the source closed (migration_cleanup) fails at its end; with
        # exit-on-error (7.2: always) the destination then exits.
        if source.status in ("failed", "cancelled") and destination.status == "active":
            return f"the destination is still loading after the source {source.status}"
    return None


def capability_list(capabilities: Mapping[str, bool]) -> list[dict[str, Any]]:
    """migrate-set-capabilities' argument form, in the scenario's order (order matters: qmp_migrate_set_capabilities,
    docs/real-qemu-facts.md caps-rules)."""
    return [{"capability": name, "state": bool(state)} for name, state in capabilities.items()]


class MigrationPair:
    """Source + destination (``-incoming defer``) of one binary (or two, for cross-version runs).

    Use ``async with``: both VMs and the private folder are gone afterwards, whatever happened.
    ``start_source`` / ``start_destination`` may be called separately (the executor starts the source
    alone first, so that a source that refuses to start leaves no destination behind).
    """

    def __init__(
        self,
        binary: QemuBinary,
        source_args: Sequence[str],
        destination_args: Sequence[str],
        *,
        log_dir: Path | None = None,
        destination_binary: QemuBinary | None = None,
        launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT_S,
        command_timeout: float = 30.0,
    ) -> None:
        self.private = private_dir()
        self.log_dir = log_dir if log_dir is not None else self.private
        common = {
            "log_dir": self.log_dir,
            "sock_dir": self.private,
            "launch_timeout": launch_timeout,
            "command_timeout": command_timeout,
        }
        self.source = QemuMachine(binary, source_args, name="source", **common)  # type: ignore[arg-type]
        self.destination = QemuMachine(
            destination_binary or binary,
            [*destination_args, "-incoming", "defer"],
            name="destination",
            **common,  # type: ignore[arg-type]
        )
        self.incoming_uri: str | None = None  # set once migrate-incoming ran (tcp/unix)
        self.outgoing_uri: str | None = None
        self.stream_file: Path | None = None  # file/exec: where the source wrote the stream
        self.stream_transport: str | None = None
        self.stream_loaded = False
        self.last_unsettled: str | None = None  # why the last final_states() read was not quiescent
        # Waits the query guard could not end (harness.listen_guard: the listen thread outlived its bound).
        self.guard_notes: list[str] = []
        if needs_listen_guard(self.destination.binary.version):
            self.destination.query_migrate_guard = ListenThreadGuard(self.source, self.destination, self.guard_notes)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> MigrationPair:
        try:
            await self.start_source()
            await self.start_destination()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start_source(self) -> None:
        await self.source.launch()

    async def start_destination(self) -> None:
        await self.destination.launch()

    async def close(self) -> None:
        """End both QEMUs (in parallel: nothing depends on the order) and remove the private folder.

        The folder goes even when the close itself is cancelled: a SIGINT/SIGTERM that arrives while a run is
        already closing its pair cancels this await (procutil's handler has killed every QEMU by then), and
        the folder must not outlive the run (seen: sockets and the stream file left in TMPDIR)."""
        try:
            await asyncio.gather(self.source.shutdown(), self.destination.shutdown(), return_exceptions=True)
        finally:
            shutil.rmtree(self.private, ignore_errors=True)

    def side(self, name: str) -> QemuMachine:
        if name == "source":
            return self.source
        if name == "destination":
            return self.destination
        raise ValueError(f"unknown side {name!r} (allowed: source, destination)")

    # ------------------------------------------------------------------ configuration

    async def set_capabilities(self, side: str, capabilities: Mapping[str, bool]) -> None:
        await self.side(side).qmp("migrate-set-capabilities", capabilities=capability_list(capabilities))

    async def set_parameters(self, side: str, parameters: Mapping[str, Any]) -> None:
        await self.side(side).qmp("migrate-set-parameters", dict(parameters))

    # ------------------------------------------------------------------ migration

    async def start_incoming(self, transport: str) -> str:
        """migrate-incoming on the destination for a socket transport; the URI the source must use.

        tcp listens on 127.0.0.1 port 0 and reads the real port back from query-migrate's
        socket-address (so parallel runs never collide on a port).
        """
        if transport == "tcp":
            await self.destination.qmp("migrate-incoming", uri="tcp:127.0.0.1:0")
            info = await self.destination.query_migrate()
            port = None
            for address in info.get("socket-address", []):
                if address.get("type") == "inet":
                    port = address.get("port")
                    break
            if port is None:
                raise MigrationTimeout("the destination to report its listening port", 0, str(info))
            uri = f"tcp:127.0.0.1:{port}"
        elif transport == "unix":
            uri = f"unix:{self.private / 'migration.sock'}"
            await self.destination.qmp("migrate-incoming", uri=uri)
        else:
            raise ValueError(f"transport {transport!r} has no incoming side before the migration")
        self.incoming_uri = uri
        return uri

    def stream_uri(self, transport: str, *, incoming: bool) -> str:
        """The URI of a file/exec stream: the source writes it, the destination reads it back."""
        assert self.stream_file is not None
        path = str(self.stream_file)
        if transport == "file":
            return f"file:{path}"
        if transport == "exec":
            return f"exec:cat {shlex.quote(path)}" if incoming else f"exec:cat > {shlex.quote(path)}"
        raise ValueError(f"transport {transport!r} does not go through a file")

    async def migrate(self, transport: str, *, reuse_incoming: bool = True) -> str:
        """Start the migration on the source; returns the URI used.

        tcp/unix: migrate-incoming first, once; a later migrate reuses that URI (the contract's rule).
        file/exec: the source writes into the private folder; :meth:`load_stream` feeds the destination.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r} (allowed: {', '.join(TRANSPORTS)})")
        if transport in ("tcp", "unix"):
            uri = self.incoming_uri if (reuse_incoming and self.incoming_uri) else await self.start_incoming(transport)
        else:
            if self.stream_file is None:
                self.stream_file = self.private / "migration.stream"
            self.stream_transport = transport
            uri = self.stream_uri(transport, incoming=False)
        self.outgoing_uri = uri
        await self.source.qmp("migrate", uri=uri)
        return uri

    async def migrate_from_destination(self, transport: str) -> str:
        """``migrate`` issued on the destination; the stream goes to a file or socket of the private folder."""
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r} (allowed: {', '.join(TRANSPORTS)})")
        target = self.private / "from-destination"
        uri = {
            "tcp": "tcp:127.0.0.1:1",  # nothing listens on port 1: an asynchronous connect failure
            "unix": f"unix:{target}.sock",
            "file": f"file:{target}.stream",
            "exec": f"exec:cat > {target}.stream",
        }[transport]
        await self.destination.qmp("migrate", uri=uri)
        return uri

    async def load_stream(self) -> None:
        """Feed the file the source wrote into the destination (file: or exec:cat)."""
        if self.stream_transport is None or self.stream_loaded:
            return
        self.stream_loaded = True
        await self.destination.qmp("migrate-incoming", uri=self.stream_uri(self.stream_transport, incoming=True))

    async def start_postcopy(self) -> None:
        await self.source.qmp("migrate-start-postcopy")

    async def cancel(self) -> None:
        await self.source.qmp("migrate_cancel")

    # ------------------------------------------------------------------ waits

    async def wait_status(
        self,
        side: str,
        done: frozenset[str] | set[str],
        timeout: float,
        *,
        what: str = "",
        negate: bool = False,
    ) -> str:
        """Wait (bounded) until ``side``'s query-migrate status is in ``done`` (or, with ``negate``, is not);
        that status. Raises :class:`MigrationTimeout`, or :class:`VmDied` if the side exits first."""
        vm = self.side(side)
        deadline = time.monotonic() + timeout
        status = "none"
        while True:
            vm.clear_changed()
            status = await vm.query_migrate_status()
            if (status in done) != negate:
                return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                label = what or f"{side} migration status {'not ' if negate else ''}in {sorted(done)}"
                raise MigrationTimeout(label, timeout, status)
            await vm.wait_changed(min(remaining, POLL_INTERVAL_S))

    async def wait_left_setup(self, timeout: float) -> str:
        """Until the source's migration is past ``setup`` (start-postcopy and cancel need that)."""
        return await self.wait_status(
            "source", frozenset({"setup", "none"}), timeout, negate=True, what="the migration to leave setup"
        )

    async def wait_incoming_started(self, source_status: str, timeout: float) -> str | None:
        """Until a connected destination has started its incoming migration (left 10.0's setup, 7.2's none).

        The source leaves setup in its own migration thread; the destination leaves it only when its main
        loop accepts the connection (socket_accept_incoming_migration -> process_incoming_migration_co),
        which can be later, so "source active, destination setup" is a moment, not a state. Nothing to wait
        for without a socket incoming migration, or when ``source_status`` does not prove a connection.
        The destination's status, or None when it died meanwhile (the next step or the final states see that).
        """
        if self.incoming_uri is None or source_status not in CONNECTED_SOURCE_STATUSES:
            return None
        try:
            return await self.wait_status(
                "destination",
                INCOMING_NOT_STARTED,
                timeout,
                negate=True,
                what="the destination to start its incoming migration",
            )
        except VmDied:
            return None

    async def wait_status_left(self, side: str, status: str, timeout: float) -> str:
        """Until ``side`` is no longer in ``status`` (cancel: cancelling; start-postcopy: active)."""
        return await self.wait_status(
            side, frozenset({status}), timeout, negate=True, what=f"the {side} to leave {status}"
        )

    async def wait_source_end(self, timeout: float) -> str:
        """Until the source ends, or parks in ``pre-switchover`` (pause-before-switchover: only
        migrate-continue moves it on, so waiting longer would only time out)."""
        return await self.wait_status("source", END_STATUSES | PARKED_STATUSES, timeout, what=SOURCE_MIGRATION_END)

    async def migrate_continue(self) -> None:
        """``migrate-continue`` out of pre-switchover (pause-before-switchover)."""
        await self.source.qmp("migrate-continue", state="pre-switchover")

    async def wait_destination_end(self, timeout: float) -> str | None:
        """Until the destination's incoming migration ends or the destination dies; its status, or None if
        it died (a failed load makes the destination exit(1))."""
        try:
            return await self.wait_status(
                "destination", DESTINATION_END_STATUSES, timeout, what=DESTINATION_MIGRATION_END
            )
        except VmDied:
            return None

    async def wait_status_seen(self, side: str, wanted: str, timeout: float) -> bool:
        """Whether ``side`` reaches status ``wanted`` within ``timeout`` (False on timeout or end)."""
        vm = self.side(side)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            vm.clear_changed()
            status = await vm.query_migrate_status()
            if status == wanted or wanted in vm.migration_events():
                return True
            if status in END_STATUSES:
                return False
            await vm.wait_changed(POLL_INTERVAL_S)
        return False

    # ------------------------------------------------------------------ results

    async def final_state(self, side: str, timeout: float = FINAL_STATE_TIMEOUT_S) -> VmState | None:
        """``query-migrate`` status and runstate of a side; None when that QEMU is gone (before or while
        being asked).

        A QEMU that is alive but does not answer within ``timeout`` (stopped, or a monitor blocked behind a
        hung command) raises :class:`QmpTimeout`: a null state there would read as "this side is gone" and
        let the run end ``completed`` with nothing checked."""
        vm = self.side(side)
        if not vm.is_alive:
            return None
        try:
            status = await self._bounded(vm, "query-migrate", vm.query_migrate_status(), timeout)
            runstate = await self._bounded(vm, "query-status", vm.runstate(), timeout)
        except (VmDied, QmpConnectionError):
            if vm.is_alive:
                raise
            return None
        return VmState(status=status, runstate=runstate)

    @staticmethod
    async def _bounded(vm: QemuMachine, command: str, query: Awaitable[str], timeout: float) -> str:
        try:
            return await asyncio.wait_for(query, timeout)
        except TimeoutError:
            if not vm.is_alive or vm.pid is None:
                raise vm.died() from None
            raise QmpTimeout(vm.name, command, timeout, process_state(vm.pid), str(vm.log_path)) from None

    async def final_states(self, settle_timeout: float = SETTLE_TIMEOUT_S) -> tuple[VmState | None, VmState | None]:
        """Both sides' states at a quiescent point (:func:`unsettled`), read twice alike: read again,
        bounded by ``settle_timeout``, while either side is in a state QEMU leaves on its own or the reads
        differ. After the bound, what was read last (and :attr:`last_unsettled` says why it was not settled)."""
        deadline = time.monotonic() + settle_timeout
        previous: tuple[VmState | None, VmState | None] | None = None
        while True:
            source, destination = await asyncio.gather(self.final_state("source"), self.final_state("destination"))
            self.last_unsettled = unsettled(source, destination, incoming=self.incoming_uri is not None)
            # Status and runstate are two QMP commands: a transition between them tears the pair (seen: a
            # source "active" with runstate postmigrate), so a settled read counts only when the one before
            # it was the same.
            if self.last_unsettled is None and previous == (source, destination):
                return source, destination
            if time.monotonic() >= deadline:
                if self.last_unsettled is None and previous != (source, destination):
                    self.last_unsettled = "the states kept changing between reads"
                return source, destination
            previous = (source, destination)
            await asyncio.sleep(POLL_INTERVAL_S)
