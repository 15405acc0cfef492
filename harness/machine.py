"""One QEMU process under test, driven over QMP: :class:`QemuMachine`.

Modelled on QEMU's own ``QEMUMachine`` (python/qemu/machine): a VM is an async context manager, QMP
runs over a Unix socket that *we* listen on (QEMU connects as a client, so there is nothing to poll for),
and a launch that fails carries the argv, the exit status and QEMU's own message. Differences that
matter here: the process is always in its own process group with PDEATHSIG (harness.procutil), the
message is extracted exactly as the outcome contract wants it (program-name and option prefixes
removed), and migration events are buffered from the moment QMP is up, so no event is lost between a
command and the wait that follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from harness import procutil
from harness.binaries import QemuBinary
from harness.crash import CrashRecord, crash_record
from harness.errors import (
    JobTimeout,
    QemuLaunchError,
    QmpCommandError,
    QmpConnectionError,
    QmpEventTimeout,
    QmpTimeout,
    VmDied,
)
from harness.qemu_stderr import qemu_error_message, strip_qemu_prefixes
from harness.qmp_close import close_qmp
from harness.qmp_events import RECORDED_EVENTS, EventRecorder, RecordedEvents

QMP_CHARDEV_ID = "migconform-qmp"
DEFAULT_LAUNCH_TIMEOUT_S = 20.0
DEFAULT_COMMAND_TIMEOUT_S = 30.0
# Our QMP clients log under this name. A QEMU that refuses to start closes QMP mid-negotiation, which
# qemu.qmp logs as an ERROR; the driver turns that into QemuLaunchError, so only CRITICAL (a bug in the
# client itself) is worth showing.
QMP_LOGGER = "qemu.qmp.protocol.migconform"
logging.getLogger(QMP_LOGGER).setLevel(logging.CRITICAL)


# Unix socket paths must fit sun_path (108 bytes with its NUL); our socket names are at most this long.
SOCKET_PATH_MAX = 107
SOCKET_NAME_ALLOWANCE = 32


def private_dir(prefix: str = "migconform-") -> Path:
    """A fresh 0700 folder for sockets, in the system temp dir when socket paths under it fit sun_path, else
    in /tmp: a deep TMPDIR (a CI workspace, a pytest tmp_path) must not turn into "AF_UNIX path too long"."""
    base = tempfile.gettempdir()
    if len(base) + len(prefix) + 10 + SOCKET_NAME_ALLOWANCE > SOCKET_PATH_MAX and os.path.isdir("/tmp"):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


async def _settle(*futures: asyncio.Future[Any]) -> None:
    """Cancel and await futures we no longer need, retrieving whatever they hold (result, exception or
    cancellation), so that none is garbage-collected with an exception nobody looked at."""
    for future in futures:
        if not future.done():
            future.cancel()
    for future in futures:
        with contextlib.suppress(BaseException):
            await future


class QemuMachine(RecordedEvents):
    """A QEMU process with a QMP connection; ``async with QemuMachine(...) as vm:`` launches and ends it.

    ``args`` are QEMU arguments after the ones every launch gets (``-nodefaults -display none`` and the
    QMP chardev). ``name`` is the side ("source"/"destination") used in messages. Logs go to
    ``log_dir/<name>.log`` (stderr) and ``<name>.stdout.log``; sockets go into ``sock_dir`` (default: a
    private 0700 temp folder removed at shutdown).
    """

    def __init__(
        self,
        binary: QemuBinary,
        args: Sequence[str],
        *,
        name: str = "vm",
        log_dir: Path | None = None,
        sock_dir: Path | None = None,
        launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT_S,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
    ) -> None:
        self.binary = binary
        self.name = name
        self.launch_timeout = launch_timeout
        self.command_timeout = command_timeout
        self._own_sock_dir = sock_dir is None
        self.sock_dir = sock_dir if sock_dir is not None else private_dir()
        self.log_dir = log_dir if log_dir is not None else self.sock_dir
        self._own_log_dir = log_dir is None and self._own_sock_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.qmp_path = self.sock_dir / f"{name}.qmp"
        self.log_path = self.log_dir / f"{name}.log"
        self.stdout_path = self.log_dir / f"{name}.stdout.log"
        self.argv: list[str] = binary.argv(
            "-nodefaults",
            "-display",
            "none",
            "-chardev",
            f"socket,id={QMP_CHARDEV_ID},path={self.qmp_path}",
            "-mon",
            f"chardev={QMP_CHARDEV_ID},mode=control",
            # Named threads: the kernel's fault report of a crash names the QEMU thread (harness.crash), and
            # the pair can see a destination's postcopy/listen thread (MigrationPair's query guard).
            "-name",
            "debug-threads=on",
            *args,
        )
        self._client: QMPClient | None = None
        self._recorder = EventRecorder(RECORDED_EVENTS)
        self._proc: asyncio.subprocess.Process | None = None
        self._files: list[IO[bytes]] = []
        self.launch_started: float | None = None
        # How shutdown() had to end this QEMU when ``quit`` did not (None: quit did, or QEMU was gone).
        self.shutdown_note: str | None = None
        # Awaited before every query-migrate (MigrationPair installs one on a destination that needs it).
        self.query_migrate_guard: Callable[[], Awaitable[None]] | None = None

    def append_args(self, args: Sequence[str]) -> None:
        """Add arguments before launch (the executor adds VFIO devices only once it launches that side,
        so that a source that refuses to start never costs the destination's host devices)."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: arguments cannot change after launch")
        self.argv.extend(args)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> QemuMachine:
        await self.launch()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def launch(self) -> None:
        """Start QEMU and wait (bounded) until QMP is up; raises :class:`QemuLaunchError` if QEMU exits first."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: already launched")
        client = QMPClient(f"migconform.{self.name}")
        client.register_listener(self._recorder)
        self._client = client
        self.qmp_path.unlink(missing_ok=True)  # a previous VM of the same name in a shared sock_dir
        try:
            await client.start_server(str(self.qmp_path))
        except (QMPError, OSError) as exc:
            self._client = None
            raise QmpConnectionError(f"{self.name}: cannot listen for QMP on {self.qmp_path}: {exc}") from exc
        stderr = self.log_path.open("wb")
        stdout = self.stdout_path.open("wb")
        self._files = [stderr, stdout]
        self.launch_started = time.monotonic()
        try:
            # PR_SET_PDEATHSIG through setpriv when available (fast), else through a preexec_fn.
            wrapper = procutil.pdeathsig_wrapper()
            self._proc = await asyncio.create_subprocess_exec(
                *wrapper,
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.binary.environ(),
                start_new_session=True,
                preexec_fn=None if wrapper else procutil.child_preexec(os.getpid()),
            )
        except OSError as exc:
            await self._close_client()
            self._cleanup_files()
            raise QemuLaunchError(
                self.argv, None, "", f"could not be executed (step: startup): {exc}", None, side=self.name
            ) from exc
        procutil.register(self._proc.pid, f"{self.name}: {' '.join(self.argv)}")
        if procutil.interrupted() is not None:
            # A SIGINT/SIGTERM came while this QEMU was being forked: the signal handler's kill_all ran before
            # the registry knew it. The run is stopping: end it now rather than start a migration with it.
            await self._kill()
            await self._close_client()
            self._cleanup_files()
            raise QemuLaunchError(
                self.argv, None, "", "was not started: the run was interrupted (step: startup)", None, side=self.name
            )
        accept = asyncio.ensure_future(client.accept())
        exited = asyncio.ensure_future(self._proc.wait())
        try:
            done, _ = await asyncio.wait({accept, exited}, timeout=self.launch_timeout, return_when="FIRST_COMPLETED")
        except asyncio.CancelledError:
            # Cancelled mid-launch (an outer timeout, an interrupted run): `async with` will not call
            # __aexit__, so end QEMU here and leave nothing pending (retrieving both futures' results, so that
            # asyncio never reports "exception was never retrieved").
            procutil.kill_group(self._proc.pid, signal.SIGKILL)
            await _settle(accept, exited)
            with contextlib.suppress(BaseException):
                await self.shutdown(timeout=1.0)
            raise
        if accept in done and accept.exception() is None:
            exited.cancel()
            await _settle(exited)
            return
        timed_out = not done
        if accept in done and exited not in done:
            # QMP failed (QEMU closed the socket while exiting): give the exit a moment. A launch that timed
            # out gets no extra time: --timeout is the whole bound.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), 5.0)
        await _settle(accept, exited)
        status = self._proc.returncode
        if status is None:
            await self._kill()
        else:
            await self._reap()
        await self._close_client()
        text = self.stderr_text()
        if status is None:
            how = f"within {self.launch_timeout:g} s" if timed_out else "(its QMP connection failed)"
            message = f"did not offer QMP {how} (step: startup)"
        else:
            message = qemu_error_message(text, self.argv)
        # The log stays where it is (the item's workdir, or nowhere once our own temp folder goes): cite it
        # only if it outlives this launch.
        log_path = None if self._own_log_dir else str(self.log_path)
        self._cleanup_files()
        raise QemuLaunchError(self.argv, status, text, message, log_path, side=self.name)

    async def shutdown(self, timeout: float = 1.5, term_timeout: float = 0.5) -> None:
        """End QEMU however it is: ``quit`` (bounded by ``timeout``, exit included), then SIGTERM (bounded
        by ``term_timeout``), then SIGKILL. Idempotent. When even SIGTERM was not enough, :attr:`shutdown_note`
        says so (the executor puts it in the outcome: a QEMU stuck at exit is worth knowing). A QEMU that SIGTERM
        ends was only slow (it takes the same main-loop path as ``quit``; in the nested VFIO lab under TCG that
        is routine), so it gets no note: a note on every item would hide the ones that matter.

        The bounds are short on purpose: a QEMU that has not exited 1.5 s after ``quit`` is stuck (e.g. a
        rate-limited migration thread that migration_shutdown waits for, or a monitor blocked on a lock),
        and SIGTERM takes the same main-loop path as ``quit``, so waiting longer only slows every run."""
        if self._proc is None:
            await self._close_client()
            self._cleanup_files()
            return
        deadline = time.monotonic() + timeout
        running = self._proc.returncode is None
        quit_sent = False
        if running and self._client is not None and self._client.runstate.name == "RUNNING":
            quit_sent = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.execute("quit"), timeout)
        if not await self._wait_exit(max(0.0, deadline - time.monotonic())):
            first = f"did not exit within {timeout:g} s of quit" if quit_sent else "no QMP connection to send quit"
            procutil.kill_group(self._proc.pid, signal.SIGTERM)
            if not await self._wait_exit(term_timeout):
                await self._kill()
                self.shutdown_note = f"{first}, no exit within {term_timeout:g} s of SIGTERM: needed SIGKILL"
        await self._reap()
        await self._close_client()
        self._cleanup_files()

    async def kill(self) -> None:
        """SIGKILL the QEMU (e.g. to make a destination die mid-migration); QMP is closed afterwards."""
        if self._proc is not None and self._proc.returncode is None:
            await self._kill()
        await self._close_client()

    async def _kill(self) -> None:
        assert self._proc is not None
        procutil.kill_group(self._proc.pid, signal.SIGKILL)
        await self._wait_exit(10.0)
        await self._reap()

    async def _wait_exit(self, timeout: float) -> bool:
        assert self._proc is not None
        if self._proc.returncode is not None:
            return True
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _reap(self) -> None:
        """After QEMU has exited: kill anything left in its process group (exec: migration's shell and
        cat), and forget it in the registry."""
        assert self._proc is not None
        if self._proc.returncode is None:
            return
        procutil.kill_group(self._proc.pid, signal.SIGKILL)
        procutil.unregister(self._proc.pid)

    async def _close_client(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        await close_qmp(client)

    def _cleanup_files(self) -> None:
        for handle in self._files:
            with contextlib.suppress(OSError):
                handle.close()
        self._files = []
        if self._own_sock_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    # ------------------------------------------------------------------ process facts

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def exit_status(self) -> int | None:
        """The exit status once QEMU has exited (negative: killed by that signal), else None."""
        return self._proc.returncode if self._proc is not None else None

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait (bounded) for QEMU to exit on its own; its exit status, or None if it is still running."""
        if self._proc is None:
            return None
        if await self._wait_exit(timeout):
            await self._reap()
        return self._proc.returncode

    def stderr_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def last_stderr_line(self) -> str:
        """QEMU's last non-empty stderr line, with the program-name and option prefixes removed."""
        lines = [line for line in self.stderr_text().splitlines() if line.strip()]
        return strip_qemu_prefixes(lines[-1], self.argv) if lines else ""

    def thread_names(self) -> list[str]:
        """The names of QEMU's threads now (``-name debug-threads=on``); [] when it is gone."""
        if self._proc is None or self._proc.returncode is not None:
            return []
        return procutil.thread_names(self._proc.pid)

    def crash(self) -> CrashRecord | None:
        """What the kernel logged when this QEMU died by a fault signal, or None (alive, exited, ended by us)."""
        return crash_record(self.exit_status, self.pid, self.launch_started)

    def died(self) -> VmDied:
        """The error that says this VM is gone (use once :attr:`is_alive` is false)."""
        return VmDied(self.name, self.exit_status, self.last_stderr_line())

    # ------------------------------------------------------------------ QMP

    async def qmp(self, command: str, arguments: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Run one QMP command; its ``return`` value.

        Raises :class:`QmpCommandError` when QEMU answers with an error, :class:`VmDied` when QEMU is
        gone (or goes away while answering), :class:`QmpConnectionError` when the socket broke while the
        process lives on, :class:`QmpTimeout` when a live QEMU does not answer within the command timeout
        (hung monitor, or a stopped process: the error says which state the process was in).
        """
        args = {**(arguments or {}), **kwargs}
        client = self._client
        if client is None or not self.is_alive:
            await self._settle_after_disconnect()
            raise self.died() if not self.is_alive else QmpConnectionError(f"{self.name}: QMP is not connected")
        try:
            return await asyncio.wait_for(client.execute(command, args or None), self.command_timeout)
        except ExecuteError as exc:
            raise QmpCommandError(command, args, exc.error.error.desc, exc.error_class, self.name) from None
        except TimeoutError:
            if self.is_alive and self._proc is not None and procutil.pid_alive(self._proc.pid):
                state = procutil.process_state(self._proc.pid)
                raise QmpTimeout(self.name, command, self.command_timeout, state, str(self.log_path)) from None
            await self._settle_after_disconnect()
            raise self.died() from None
        except (QMPError, OSError, EOFError) as exc:
            await self._settle_after_disconnect()
            if not self.is_alive:
                raise self.died() from exc
            raise QmpConnectionError(f"{self.name}: QMP failed during {command}: {exc!r}") from exc

    async def _settle_after_disconnect(self) -> None:
        """A broken QMP socket usually means QEMU is exiting: give it a moment to finish exiting."""
        if self._proc is not None and self._proc.returncode is None:
            await self._wait_exit(2.0)
            await self._reap()

    async def query_migrate(self) -> dict[str, Any]:
        if self.query_migrate_guard is not None:
            await self.query_migrate_guard()
        result = await self.qmp("query-migrate")
        return dict(result) if isinstance(result, dict) else {}

    async def query_migrate_status(self) -> str:
        """``query-migrate``'s status; "none" when there is no status key (no migration yet)."""
        return str((await self.query_migrate()).get("status", "none"))

    async def run_job(self, command: str, arguments: Mapping[str, Any], timeout: float) -> None:
        """Run a QMP command that starts the job ``arguments["job-id"]``, wait (bounded) until the job has
        concluded, then dismiss it. The wait is on JOB_STATUS_CHANGE, which QEMU sends on every transition
        (job_state_transition) whatever the capabilities, recorded from before the command.

        Raises :class:`QmpCommandError` when QEMU refuses the command or the job concludes with an error (the
        job's error is then ``desc``), :class:`JobTimeout` (with the job's status) when it has not concluded
        within ``timeout``, :class:`VmDied` when QEMU exits first. A job gone at the end of the wait (an
        auto-dismissed one) says nothing more."""
        job_id = str(arguments["job-id"])
        start = len(self._recorder.events)
        await self.qmp(command, arguments)

        def concluded(event: dict[str, Any]) -> bool:
            data = event.get("data", {})
            return (
                event.get("event") == "JOB_STATUS_CHANGE"
                and data.get("id") == job_id
                and data.get("status") == "concluded"
            )

        with contextlib.suppress(QmpEventTimeout):
            await self.wait_event(concluded, timeout, start)
        job = next((j for j in await self.qmp("query-jobs") if j.get("id") == job_id), None)
        if job is None:
            return
        if job.get("status") != "concluded":
            raise JobTimeout(f"{command} job {job_id}", timeout, str(job.get("status")))
        with contextlib.suppress(QmpCommandError):
            await self.qmp("job-dismiss", id=job_id)
        if job.get("error"):
            raise QmpCommandError(command, arguments, str(job["error"]), "GenericError", self.name)

    async def runstate(self) -> str:
        result = await self.qmp("query-status")
        return str(result["status"]) if isinstance(result, dict) else "unknown"
