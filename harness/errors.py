"""The errors the real-QEMU driver raises, as one hierarchy.

Callers catch :class:`MigconformError` for "something about the QEMU under test went wrong" and the
subclasses when they need the details: the executor turns a :class:`QemuLaunchError` into a ``startup``
refusal, a :class:`QmpCommandError` into a refusal at the step that sent it, and :class:`VmDied` into a
``failed`` verdict. Every error carries what a user needs to act without re-running: the argv, QEMU's own
words, and which side it was.

Hierarchy::

    MigconformError
    ├── BinaryError          a QEMU binary that cannot be used (missing, not executable, no version)
    ├── QemuLaunchError      QEMU refused to start (exited before QMP was up) or QMP never came up
    ├── QmpError             talking to a running QEMU failed
    │   ├── QmpCommandError  QEMU answered a command with an error (GenericError & co.)
    │   └── QmpConnectionError  the QMP connection broke (usually: QEMU died)
    ├── MigrationTimeout     a bounded wait ran out
    ├── QmpTimeout           a live QEMU did not answer a QMP command in time (hung or stopped): the harness's
    │                        error of the item, never a state or a verdict
    ├── VmDied               a QEMU process exited while the scenario still needed it
    ├── GuestCheckError      a live guest's memory check examined nothing (its output could not be read)
    └── HostEnvironmentError the host could not give the run what it needed (memory, disk, a probe that
        │                    works, a resource the run was promised): never QEMU's answer
        └── ResourceUnavailable  a resource the run should have had (VFIO device, mdev, guest image)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from contract.messages import vm_exited, wait_timed_out


class MigconformError(Exception):
    """Base class of every error the driver raises on purpose."""


class BinaryError(MigconformError):
    """A QEMU binary that cannot be used: the message names the path and what is wrong with it."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class QemuLaunchError(MigconformError):
    """QEMU did not come up.

    ``message`` is QEMU's own error line with the program-name and option prefixes removed (what the
    outcome record's ``error`` holds); ``stderr`` is everything QEMU wrote, for the log.
    ``exit_status`` is None when QEMU was still running but never offered QMP (then it was killed).
    """

    def __init__(
        self,
        argv: Sequence[str],
        exit_status: int | None,
        stderr: str,
        message: str,
        log_path: str | None = None,
        side: str = "",
    ) -> None:
        self.argv = tuple(argv)
        self.exit_status = exit_status
        self.stderr = stderr
        self.message = message
        self.log_path = log_path
        self.side = side
        who = f"{side} QEMU" if side else "QEMU"
        # exit_status None: ``message`` says what went wrong at startup ("did not offer QMP within 5 s ...").
        head = f"{who} {message}" if exit_status is None else f"{who} exited with status {exit_status}: {message}"
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{head}{where}\n  argv: {' '.join(self.argv)}")


class QmpError(MigconformError):
    """Talking to a running QEMU failed."""


class QmpCommandError(QmpError):
    """QEMU answered a QMP command with an error.

    ``desc`` is QEMU's message exactly as sent (the outcome's ``error``), ``error_class`` its class
    (usually GenericError).
    """

    def __init__(self, command: str, arguments: Mapping[str, Any], desc: str, error_class: str, side: str = "") -> None:
        self.command = command
        self.arguments = dict(arguments)
        self.desc = desc
        self.error_class = error_class
        self.side = side
        who = f"{side} " if side else ""
        super().__init__(f"{who}QEMU refused {command} {self.arguments}: {error_class}: {desc}")


class QmpConnectionError(QmpError):
    """The QMP connection broke or could not be used (QEMU died, or closed the socket)."""


class MigrationTimeout(MigconformError):
    """A bounded wait ran out; ``what`` says what was awaited and ``last_seen`` the last state observed."""

    def __init__(self, what: str, timeout: float, last_seen: str | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.last_seen = last_seen
        super().__init__(wait_timed_out(what, timeout, last_seen))


class QmpTimeout(MigconformError):
    """A QEMU that is still alive did not answer a QMP command within the bound.

    Not a subclass of :class:`MigrationTimeout` on purpose: the executor turns a wait that ran out into a
    ``failed`` verdict, whereas a monitor that stops answering is not an answer of QEMU's migration code. It may
    be a QEMU bug (a monitor blocked behind a hung command) or the host's doing (a stopped or starved process);
    the harness cannot tell them apart, so it reports the item as a harness error that names the side, the
    command, the process state and the log, and a person decides.
    """

    def __init__(
        self, side: str, command: str, timeout: float, process_state: str, log_path: str | None = None
    ) -> None:
        self.side = side
        self.command = command
        self.timeout = timeout
        self.process_state = process_state
        self.log_path = log_path
        where = f"; log: {log_path}" if log_path else ""
        super().__init__(
            f"{side} QEMU did not answer {command} within {timeout:g} s (process state: {process_state}{where})"
        )


class VmDied(MigconformError):
    """A QEMU process exited while it was still needed.

    ``str()`` is the contract's error text: "<side> QEMU exited with status N: <last stderr line>".
    N is the exit status, or minus the signal number when QEMU was killed by a signal (-6: an assertion
    aborted it, -9: SIGKILL); the stderr line is stripped of its program-name and option prefixes like
    every QEMU message in an outcome.
    """

    def __init__(self, side: str, status: int | None, last_stderr_line: str) -> None:
        self.side = side
        self.status = status
        self.last_stderr_line = last_stderr_line
        super().__init__(vm_exited(side, status, last_stderr_line))


class HostEnvironmentError(MigconformError):
    """The host, not QEMU, failed the run: out of memory or disk, a binary whose probe fails, a results file
    that cannot be written. Such an item is neither an agreement nor a divergence: it is reported in its own
    category (``environment``) with its own exit status, so a user does not file a QEMU bug for a full disk.

    ``what`` names the resource or step that failed, ``detail`` the host's own words (errno text, stderr).
    """

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"{what}: {detail}")


class ResourceUnavailable(HostEnvironmentError):
    """A resource the run should have had and did not get: a VFIO device that became unavailable after the
    source started, an exhausted mdev pool, a guest image that failed to build. Silently turning these into
    skips would shrink a run without anyone noticing; they are errors (see ``--require-all``)."""


class GuestCheckError(MigconformError):
    """A live guest answered the memory check, but the answer says nothing about its memory: the workload's
    ``verify`` output could not be parsed, or it checked no page. Recording that as "alive, 0 bad pages" would
    turn a check that examined nothing into an agreement; it is the harness's failure, never QEMU's answer.
    ``output`` is what the guest printed, so the user sees why."""

    def __init__(self, side: str, problem: str, output: str) -> None:
        self.side = side
        self.problem = problem
        self.output = output
        super().__init__(f"guest check on the {side}: {problem}; the guest printed: {output!r}")
