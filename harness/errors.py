"""Every error migconform raises on purpose, as one hierarchy.

Callers catch :class:`MigconformError` for "something migconform was asked to do could not be done" and the
subclasses when they need the details: the executor turns a :class:`QemuLaunchError` into a ``startup``
refusal, a :class:`QmpCommandError` into a refusal at the step that sent it, a :class:`WaitTimeout` and
:class:`VmDied` into a ``failed`` verdict; the command line turns a :class:`UsageError` into exit status 2 and
a :class:`HostEnvironmentError` into the environment's exit status. Every error carries what a user needs to
act without re-running: the argv, QEMU's own words, and which side it was.

A class that belongs to one module is defined there, on a base of this tree, so that its qualified name (which
a results file's error text carries, ``harness.vfio.provider.LabRunError: ...``) stays where it was; those are
listed with their module.

Hierarchy::

    MigconformError
    ├── UsageError           bad usage or set-up the user can fix (exit status 2)
    │   └── harness.mutants.run.MutantsUsageError
    ├── harness.loader.ScenarioError  a scenario file that cannot be loaded (exit status 2)
    ├── BinaryError          a QEMU binary that cannot be used (missing, not executable, no version)
    │   └── harness.binaries.BinaryRunError  (also a HostEnvironmentError)
    ├── QemuLaunchError      QEMU refused to start (exited before QMP was up) or QMP never came up
    ├── QmpError             talking to a running QEMU failed
    │   ├── QmpCommandError  QEMU answered a command with an error (GenericError & co.)
    │   └── QmpConnectionError  the QMP connection broke (usually: QEMU died)
    ├── WaitTimeout          a bounded wait for a state of a live QEMU ran out
    │   ├── MigrationTimeout query-migrate's status (or the incoming side's port) never came
    │   ├── RunstateTimeout  query-status's runstate never came
    │   ├── QmpEventTimeout  no matching QMP event arrived
    │   └── JobTimeout       a background job (snapshot-save) did not conclude
    ├── QmpTimeout           a live QEMU did not answer a QMP command in time (hung or stopped): the harness's
    │                        error of the item, never a state or a verdict
    ├── VmDied               a QEMU process exited while the scenario still needed it
    ├── GuestCheckError      a live guest's memory check examined nothing (its output could not be read)
    ├── GuestError           the harness could not talk to a guest the way it meant to
    │   ├── harness.guest.console.ConsoleError  the serial console did not answer as expected
    │   └── harness.guest.poke.GdbError         the gdbstub refused or did not answer
    ├── VfioSetupError       the run's VFIO devices or provider cannot be used as configured
    │   ├── harness.runner.ProviderUnavailable        the named provider cannot be used here
    │   ├── harness.vfio.host_provider.HostDeviceRefused  a configured device is unusable as it is
    │   └── harness.vfio.allocator.VfioUnavailable    no such device on offer (a skip, known before QEMU)
    ├── BuildError           an input migconform builds for itself could not be built
    │   ├── harness.vfio_lab.build.LabBuildError  the VFIO lab's kernel and initramfs
    │   ├── harness.guest.image.GuestImageError   the guest image
    │   └── harness.mutants.build.BuildError      a mutant QEMU
    ├── LabError             the VFIO lab's L1 guest could not do what it was asked
    │   ├── harness.vfio_lab.boot.LabBootError    it did not get to (or through) its runner
    │   └── harness.vfio_lab.certify_lab.LabCertifyError  it wrote no certification bundle
    ├── harness.sweep.SweepError  a binary's capability list could not be read
    └── HostEnvironmentError the host could not give the run what it needed (memory, disk, a probe that
        │                    works, a resource the run was promised): never QEMU's answer
        ├── ResourceUnavailable  a resource the run should have had (VFIO device, mdev, guest image)
        │   └── harness.vfio.provider.LabRunError  the lab returned no outcomes
        ├── harness.vfio_lab.l1_abort.L1Aborted  the lab's L1 QEMU died by a signal before its runner, twice
        ├── harness.execution.verdict.HostResourceExhausted  QEMU failed for want of memory, disk or descriptors
        └── harness.binaries.BinaryRunError

Not in the tree on purpose: ``harness.execution.verdict.Refused`` is no error but QEMU's answer (a refusal) on its way
to the verdict, and never leaves the executor; under this root an ``except MigconformError`` could swallow a
verdict. The model's exceptions (``reference_impl.vfio``: VfioPropertyError, VfioInvalidTransition,
VfioSequenceError) are the model's prediction of QEMU's or the kernel's refusal, caught inside the model, and
the model does not depend on the harness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from contract.messages import vm_exited, wait_timed_out


class MigconformError(Exception):
    """Base class of every error migconform raises on purpose (the tree above)."""


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


class WaitTimeout(MigconformError):
    """A bounded wait ran out; ``what`` says what was awaited and ``last_seen`` the last state observed.

    The subclasses say which kind of wait, so that a caller that means to tolerate a slow migration
    (:class:`MigrationTimeout`) does not also swallow a job or an event that never came."""

    def __init__(self, what: str, timeout: float, last_seen: str | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.last_seen = last_seen
        super().__init__(wait_timed_out(what, timeout, last_seen))


class MigrationTimeout(WaitTimeout):
    """query-migrate never showed the awaited status (or the destination's listening port)."""


class RunstateTimeout(WaitTimeout):
    """query-status never showed the awaited runstate."""


class QmpEventTimeout(WaitTimeout):
    """No QMP event matching the caller's predicate arrived."""


class JobTimeout(WaitTimeout):
    """A background job (``snapshot-save``) was still running at the bound (query-jobs)."""


class QmpTimeout(MigconformError):
    """A QEMU that is still alive did not answer a QMP command within the bound.

    Not a subclass of :class:`WaitTimeout` on purpose: the executor turns a wait that ran out into a
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


class UsageError(MigconformError):
    """Bad usage the user can fix (exit status 2)."""


class GuestError(MigconformError):
    """The harness could not talk to a guest the way it meant to (console, gdbstub); the message says how."""


class VfioSetupError(MigconformError):
    """The run's VFIO devices or provider cannot be used as configured; the message says what to change."""


class BuildError(MigconformError):
    """An input migconform builds for itself (lab, guest image, mutant QEMU) could not be built; the message
    says which step failed and what to do about it."""


class LabError(MigconformError):
    """The VFIO lab's L1 guest could not do what it was asked; the message points at its logs."""
