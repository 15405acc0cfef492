"""What the model cannot know: whether a migration that runs at full speed has ended by the time the next step
(or the final read) reaches QEMU.

A migration of the scenario VMs at QEMU's default speed (max-bandwidth 128 MiB/s, MAX_THROTTLE in
migration/migration.c of 7.2 and migration/options.c of 10.0) sends its few megabytes in a fraction of a
second, so a step that follows a ``migrate`` without a ``wait`` meets a migration that may still be ``active``
or may have completed (or parked in pre-switchover), depending on which QEMU thread the host scheduled first.
The executor cannot settle that by waiting (waiting for the end would be a ``wait`` step the scenario did not
write, and a ``cancel`` that raced the completion cannot be undone), so the model does not pick an answer: such
a step, or the scenario's end, is :class:`~reference_impl.limits.NotModelled` with the reason, and the report
shows QEMU's outcome beside "not modelled". Measured by ``migconform fuzz`` (docs/fuzzing.md, "Triage"):
``[migrate tcp]`` alone, ``[migrate tcp, cancel]``, ``[migrate tcp, stop]``... read ``completed`` on most runs
and ``active`` on some, on 7.2.22 and 10.0.2.

A throttled migration is still running when the next step arrives (:func:`still_running`: at most
:data:`RUNNING_BANDWIDTH` for a VM of 64M or more, or a guest's filled memory that needs seconds at the rate;
:data:`SWITCH_BANDWIDTH` for a start-postcopy), so the model predicts it as before. max-bandwidth 0 is not
slow: it disables the rate limit (qemu_file_rate_limit in 7.2 migration/qemu-file.c: ``rate_limit_max > 0``;
migration_rate_exceeded in 10.0 migration/migration-stats.c: RATE_LIMIT_DISABLED). A migration switching to
postcopy runs its postcopy phase at max-postcopy-bandwidth (default 0: unlimited), and even a throttled one ends
within seconds (little is left after the precopy phase): once the switch is requested only a wait is predicted.
"""

from __future__ import annotations

from contract.policy import END_RACE
from contract.scenario import Step
from contract.sizes import parse_mib
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine

# start-postcopy comes right after the migrate step left setup: at or below this max-bandwidth (bytes/s) the precopy
# of the scenario VMs is still running when migrate-start-postcopy arrives (reference_impl.migration.start_postcopy;
# harness sweep: with 1000 both versions entered postcopy-active; the suite's postcopy scenarios use 200,000 and
# the executor's pacing 1,000,000).
SWITCH_BANDWIDTH = 10_000_000
# Any other step, and the final read, come later (the settled reads of both sides). Measured on the fuzzer's VM
# (64M, firmware only, TCG; set-parameters then migrate tcp, the final read; --repeat 3 on 7.2.22, 10.0.2,
# 10.2.2): 10,000,000 B/s completed on 8 runs of 9, 1 MiB/s on 1 of 9; the bundled scenarios that act during a
# migration of a VM of 64M or more without a guest use 1000 to 200,000 B/s (a stream of zero-page headers and
# firmware takes seconds at that rate).
RUNNING_BANDWIDTH = 200_000
SMALLEST_VM_MIB = 64
# A guest workload fills its memory: the stream is at least that many bytes, so a rate that needs this long for
# them is still running at the next step (guest-cancel-then-retry: 128M filled at 1 MiB/s).
MIN_FILLED_STREAM_S = 5.0
DEFAULT_MAX_BANDWIDTH = 128 << 20
# Statuses in which a migration is still moving on its own (pre-switchover waits for migrate-continue).
_MOVING = frozenset({"setup", "active"})


def _rate(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def throttled(value: object) -> bool:
    """A rate limit low enough for precopy to be running when start-postcopy arrives (0 means no limit)."""
    return 0 < _rate(value) <= SWITCH_BANDWIDTH


def still_running(vm: Machine, value: object, filled_mib: int) -> bool:
    """A rate limit low enough for ``vm``'s migration to outlast the executor's next step or final read."""
    rate = _rate(value)
    if rate <= 0:
        return False
    if filled_mib and filled_mib * (1 << 20) / rate >= MIN_FILLED_STREAM_S:
        return True
    return rate <= RUNNING_BANDWIDTH and parse_mib(vm.memory) >= SMALLEST_VM_MIB


def racing(vm: Machine, filled_mib: int = 0, *, switch: bool = False) -> str | None:
    """Why ``vm``'s outgoing migration may end before the next thing the executor does, or None.
    ``filled_mib``: memory a guest workload filled; ``switch``: the next thing is start-postcopy."""
    m = vm.migration
    if m is None or not vm.alive or m.failure is not None or vm.status not in _MOVING:
        return None
    if m.postcopy:
        # Even throttled, a postcopy phase is short: precopy already sent most of the small VMs' pages. Measured
        # (hidden-author set, max-bandwidth 200000, max-postcopy-bandwidth 10000, 64M): the step right after the
        # switch met postcopy-active (10.0.2, 10.2.2: cancel refused) or 10.2's transient postcopy-device, and the
        # final read found completed (10.0.2, 10.2.2) or still postcopy-active (7.2.22).
        limit = vm.params.get("max-postcopy-bandwidth", 0)
        return f"postcopy switch requested, max-postcopy-bandwidth {limit}"
    limit = vm.params.get("max-bandwidth", DEFAULT_MAX_BANDWIDTH)
    if throttled(limit) if switch else still_running(vm, limit, filled_mib):
        return None
    return f"max-bandwidth {limit}"


def _racing_side(
    source: Machine, destination: Machine, filled_mib: int, *, waiting: bool = False, switch: bool = False
) -> str | None:
    """The first side whose outgoing migration races, described. A ``wait`` step settles the source's
    migration (it waits for its end) but not one the destination started (a ``migrate`` step with side
    destination: the executor's wait watches the source only)."""
    for role, vm in (("source", source), ("destination", destination)):
        if waiting and role == "source":
            continue
        why = racing(vm, filled_mib, switch=switch)
        if why is not None:
            return f"{role}: {why}" if role == "destination" else why
    return None


def check_step(source: Machine, destination: Machine, step: Step, filled_mib: int = 0) -> None:
    """Before a step: NotModelled when a migration may already have ended (a wait settles the source's)."""
    action = step.action
    why = _racing_side(source, destination, filled_mib, waiting=action == "wait", switch=action == "start-postcopy")
    if why is not None:
        raise NotModelled(
            f"{step.action} step while a migration runs at full speed ({why}): whether it has already ended is "
            "timing (wait first, or set max-bandwidth at most 200,000 B/s)"
        )


def check_end(source: Machine, destination: Machine, filled_mib: int = 0) -> None:
    """At the scenario's end (the final read): NotModelled when a migration may have ended."""
    why = _racing_side(source, destination, filled_mib)
    if why is not None:
        raise NotModelled(
            f"{END_RACE} ({why}): whether it ended before the read is timing (end with a wait step, or set "
            "max-bandwidth at most 200,000 B/s)"
        )
