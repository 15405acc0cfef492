"""How a run that started QEMU ends: verdict, stage and error, in one place (:func:`judge`, :func:`conclude`).

The precedence, first match wins, and why:

1. **refusal** (:class:`Refused`, verdict refused at the step's stage): the first refused command ends the
   scenario (contract), so nothing after it happened; a VM that dies because of it is only its null state.
2. **VM death** during a step (:class:`VmDied`, verdict failed, stage migration): the migration's own
   ``error-desc`` still comes first in the error, since QEMU saying why it failed is more precise than "it
   exited"; then why the VM died.
3. **timeout** of a bounded wait, or a QMP socket that broke while QEMU lives on (verdict failed, stage
   migration, the wait's message): QEMU did not give the answer the scenario waited for within the bound.
4. **the steps ran out**: completed, unless a VM is gone or a side's status is failed (then failed, with the
   same error order as 2, and QEMU's last stderr line when nothing better says why).
5. **guest check failure** never changes the verdict: it is Outcome.guest, which the comparison reads on its
   own (the model predicts alive and bad_pages); a guest that never started is a harness error
   (:class:`harness.errors.GuestCheckError`), raised before any step.
6. **unsettled** never changes the verdict either: states read at the settle bound rather than at a quiescent
   point are what QEMU showed; ``extra.unsettled`` only says so.

Last, :func:`conclude` turns a refused or failed verdict whose error is the host running out of memory, disk
or descriptors into :class:`HostResourceExhausted`: that is the host's answer, not QEMU's judgement.
"""

from __future__ import annotations

import contextlib
import re

from contract.outcome import Outcome, VmState
from harness.errors import HostEnvironmentError, QmpConnectionError, VmDied, WaitTimeout
from harness.pair import END_STATUSES, MigrationPair

# glibc's strerror() texts (what QEMU's error_setg_errno and error_report print) of the errnos that mean the
# host ran out of something, not that QEMU judged the configuration: a message ending in one of these is an
# environment error, never a refusal or failed migration to compare with the model.
HOST_ERRNO_TEXTS = {
    "Cannot allocate memory": "ENOMEM",
    "No space left on device": "ENOSPC",
    "Disk quota exceeded": "EDQUOT",
    "Too many open files": "EMFILE",
    "Too many open files in system": "ENFILE",
}
_HOST_ERRNO_RE = re.compile(r": (" + "|".join(re.escape(text) for text in HOST_ERRNO_TEXTS) + r")$")


def host_errno(message: str | None) -> str | None:
    """The errno name when ``message`` ends with ": <strerror>" of a host-resource errno (QEMU's form:
    "cannot set up guest memory 'pc.ram': Cannot allocate memory", "Unable to write to file: No space left
    on device"), else None. Only the message's end counts: QEMU puts the errno text last."""
    if not message:
        return None
    match = _HOST_ERRNO_RE.search(message.rstrip())
    return HOST_ERRNO_TEXTS[match.group(1)] if match else None


class HostResourceExhausted(HostEnvironmentError):
    """QEMU failed for want of a host resource (memory, disk, file descriptors); ``outcome`` is what the run
    would otherwise have reported, for the log."""

    def __init__(self, errno_name: str, outcome: Outcome) -> None:
        self.errno_name = errno_name
        self.outcome = outcome
        where = f"{outcome.verdict}@{outcome.stage}" if outcome.stage else outcome.verdict
        super().__init__(
            f"the host ran out of a resource QEMU {outcome.qemu_version} needed ({errno_name})",
            f"{where}: {outcome.error}",
        )


class Refused(Exception):
    """A command of the scenario was refused: ends the scenario with verdict refused at ``stage``."""

    def __init__(self, stage: str, error: str) -> None:
        self.stage = stage
        self.error = error
        super().__init__(f"{stage}: {error}")


# What ends the steps early with a verdict (1 to 3 above); anything else the steps raise is a harness error.
STEP_ENDINGS = (Refused, VmDied, WaitTimeout, QmpConnectionError)


def finish(
    outcome: Outcome,
    pair: MigrationPair,
    verdict: str,
    stage: str | None,
    error: str | None,
    source: VmState | None,
    destination: VmState | None,
) -> None:
    outcome.verdict = verdict
    outcome.stage = stage
    outcome.error = error
    outcome.source = source
    outcome.destination = destination
    if pair.last_unsettled is not None and (source or destination):
        # Informative: the states were read at the settle bound, not at a quiescent point.
        outcome.extra["unsettled"] = pair.last_unsettled


async def judge(outcome: Outcome, pair: MigrationPair, ended: BaseException | None) -> None:
    """The verdict once the steps are over; ``ended`` is what ended them early (one of :data:`STEP_ENDINGS`),
    or None when they all ran."""
    if isinstance(ended, Refused):
        source, destination = await pair.final_states()
        finish(outcome, pair, "refused", ended.stage, ended.error, source, destination)
    elif isinstance(ended, VmDied):
        await _judge_not_refused(outcome, pair, died_first=ended)
    elif isinstance(ended, (WaitTimeout, QmpConnectionError)):
        source, destination = await pair.final_states()
        finish(outcome, pair, "failed", "migration", str(ended), source, destination)
    else:
        await _judge_not_refused(outcome, pair, died_first=None)


async def _judge_not_refused(outcome: Outcome, pair: MigrationPair, died_first: VmDied | None) -> None:
    """Completed, or failed because a migration failed or a VM died. Error precedence (contract): error-desc
    (source, then destination), then why a VM died, then QEMU's last stderr line."""
    source, destination = await pair.final_states()
    descs: list[str] = []
    statuses: list[str] = []
    for side, state in (("source", source), ("destination", destination)):
        if state is None:
            continue
        statuses.append(state.status)
        if state.status == "failed":
            with contextlib.suppress(Exception):
                desc = (await pair.side(side).query_migrate()).get("error-desc")
                if desc:
                    descs.append(str(desc))
    dead = [vm for vm in (pair.source, pair.destination) if vm.pid is not None and not vm.is_alive]
    if not dead and died_first is None and "failed" not in statuses:
        finish(outcome, pair, "completed", None, None, source, destination)
        return
    if descs:
        error = descs[0]
    elif died_first is not None:
        error = str(died_first)
    elif dead:
        error = str(dead[0].died())
    else:
        failed_vm = pair.source if source is not None and source.status == "failed" else pair.destination
        error = failed_vm.last_stderr_line()
    # A VM that dies before any migration still ends the run in the "migration" stage: the contract
    # has no stage for "a VM died between commands", and verdict failed already says what happened.
    finish(outcome, pair, "failed", "migration", error, source, destination)


def conclude(outcome: Outcome) -> Outcome:
    """The last word on a run that started QEMU: raises :class:`HostResourceExhausted` for an error that is the
    host's (:func:`host_errno`), and notes a migration still running at the end."""
    errno_name = host_errno(outcome.error) if outcome.verdict in ("refused", "failed") else None
    if errno_name is not None:
        raise HostResourceExhausted(errno_name, outcome)
    if outcome.source is not None and outcome.source.status not in END_STATUSES | {"none"}:
        outcome.extra.setdefault("note", "the migration was still running at the end of the scenario")
    return outcome
