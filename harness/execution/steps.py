"""One handler per scenario step action (docs/scenario-format.md, "Steps"): :data:`STEP_HANDLERS`, built from
the handler names of contract.actions (which also gives each action's refusal stage).

Beyond the contract's list, so that a state the executor reads never depends on which QEMU thread got the
CPU first, commands that QEMU carries out asynchronously are followed by a bounded wait until the source has
left the state the command leaves (the rules are listed in harness/executor.py's docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from contract.actions import resolve_handlers, stage_of
from contract.outcome import Outcome
from contract.policy import POSTCOPY_PACING_BYTES_PER_S, paced_for_postcopy
from contract.scenario import Scenario, Step, expand_steps, migrate_transport
from harness.errors import MigrationTimeout, QmpCommandError, QmpConnectionError, VmDied
from harness.execution.verdict import Refused
from harness.pair import MigrationPair

# After the destination ended: how long to keep watching for a QEMU that dies while cleaning up.
SETTLE_AFTER_WAIT_S = 1.0
# Bound for start-postcopy / cancel waiting for the migration to leave setup.
LEAVE_SETUP_TIMEOUT_S = 10.0
SNAPSHOT_JOB_TIMEOUT_S = 30.0
# After a failed or cancelled source: how long the destination gets to notice before we stop waiting.
DESTINATION_AFTER_FAILURE_S = 5.0


@dataclass
class StepContext:
    """What the steps share within one run: the pair, the outcome being filled in, and where it is."""

    scenario: Scenario
    pair: MigrationPair
    outcome: Outcome
    timeout: float
    migration_started: bool = False
    snapshot_count: int = 0

    @property
    def settle_bound(self) -> float:
        return min(self.timeout, LEAVE_SETUP_TIMEOUT_S)


Sides = tuple[str, ...]  # the VMs a step runs on, in order
StepHandler = Callable[[StepContext, Step, str, Sides], Awaitable[None]]


async def command(stage: str, qmp: Awaitable[Any]) -> Any:
    """Await one QMP interaction of a step; a QEMU error becomes the scenario's refusal at ``stage``."""
    try:
        return await qmp
    except QmpCommandError as exc:
        raise Refused(stage, exc.desc) from None


async def run_step(ctx: StepContext, step: Step) -> None:
    """Run ``step``; raises :class:`Refused` at the action's stage when QEMU refuses one of its commands."""
    handler = STEP_HANDLERS.get(step.action)
    if handler is None:
        raise ValueError(f"unknown action {step.action!r}")
    sides = ("source", "destination") if step.side == "both" else (step.side,)
    await handler(ctx, step, stage_of(step.action), sides)


# ---------------------------------------------------------------------------------------------- waits


async def wait_left_setup(ctx: StepContext) -> str | None:
    """Bounded; a migration that ends (or never started) meanwhile is left to the command to judge.
    The source's status once past setup, or None (no migration, or still in setup at the bound)."""
    if not ctx.migration_started:
        return None
    with contextlib.suppress(MigrationTimeout):
        return await ctx.pair.wait_left_setup(ctx.settle_bound)
    return None


async def wait_left(ctx: StepContext, status: str) -> None:
    """After a command QEMU carries out asynchronously: until the source has left ``status`` (bounded;
    a source still there at the bound is what the next step, or the final states, see)."""
    if not ctx.migration_started:
        return
    with contextlib.suppress(MigrationTimeout):
        await ctx.pair.wait_status_left("source", status, ctx.settle_bound)


async def pace_for_postcopy(ctx: StepContext) -> None:
    """Make a scenario's ``start-postcopy`` switch a real one.

    A VM without a guest OS has almost only zero pages, so an unthrottled precopy ends before
    ``migrate-start-postcopy`` arrives and postcopy never runs. Like QEMU's own tests
    (migrate_ensure_non_converge), throttle the precopy phase; postcopy itself is limited only by
    max-postcopy-bandwidth (default unlimited), so the rest then goes at full speed. A scenario that sets
    max-bandwidth itself keeps its own value.
    """
    if not paced_for_postcopy(expand_steps(ctx.scenario)):
        return
    with contextlib.suppress(QmpCommandError):
        await ctx.pair.set_parameters("source", {"max-bandwidth": POSTCOPY_PACING_BYTES_PER_S})


async def _destination_connected(pair: MigrationPair) -> bool:
    """Whether the destination is loading a precopy stream (status active), so that its end is certain."""
    if not pair.destination.is_alive:
        return False
    with contextlib.suppress(QmpCommandError, QmpConnectionError, VmDied):
        return await pair.destination.query_migrate_status() == "active"
    return False


async def _record_passes(ctx: StepContext) -> None:
    """How many times precopy synced the dirty log, and how many pages postcopy faulted in: evidence that
    a guest scenario iterated (or switched) as it means to. Informative; one entry per migration."""
    with contextlib.suppress(QmpCommandError, QmpConnectionError, VmDied):
        ram = (await ctx.pair.source.query_migrate()).get("ram") or {}
        passes = {key: ram[key] for key in ("dirty-sync-count", "postcopy-requests") if key in ram}
        if passes:
            ctx.outcome.extra.setdefault("ram_passes", []).append(passes)


# ---------------------------------------------------------------------------------------------- handlers


async def step_set_capabilities(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    for side in sides:
        await command(stage, ctx.pair.set_capabilities(side, step.capabilities))


async def step_set_parameters(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    for side in sides:
        await command(stage, ctx.pair.set_parameters(side, step.parameters))


async def step_migrate(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    pair = ctx.pair
    transport = migrate_transport(ctx.scenario, step)
    for side in sides:
        if side == "destination":
            # Migrating out of the destination: the pre-checks (e.g. "Guest is waiting for an
            # incoming migration") are what such a step tests; the stream goes nowhere useful.
            await command(stage, pair.migrate_from_destination(transport))
            # As for the source: until it has left setup, so that the final read does not depend on when the
            # connect's failure callback ran (tcp port 1, a missing unix path: setup -> failed).
            with contextlib.suppress(MigrationTimeout):
                await pair.wait_status_left("destination", "setup", ctx.settle_bound)
            continue
        await pace_for_postcopy(ctx)
        await command(stage, pair.migrate(transport))
        ctx.migration_started = True
        # Both sides leave setup before the next step, so that a scenario that ends while the
        # migration is still running sees one status on each side (active), not setup or active
        # depending on which QEMU got the CPU first.
        status = await wait_left_setup(ctx)
        if status is not None:
            with contextlib.suppress(MigrationTimeout):
                await pair.wait_incoming_started(status, ctx.settle_bound)


async def step_start_postcopy(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    await wait_left_setup(ctx)
    await command(stage, ctx.pair.start_postcopy())
    # migrate-start-postcopy only raises a flag (qmp_migrate_start_postcopy); the migration thread
    # switches (postcopy_start) or completes on its next iteration.
    await wait_left(ctx, "active")


async def step_cancel(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    await wait_left_setup(ctx)
    await command(stage, ctx.pair.cancel())
    # migrate_fd_cancel sets cancelling; migration_cleanup (a bottom half) sets cancelled.
    await wait_left(ctx, "cancelling")


async def step_migrate_continue(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    await command(stage, ctx.pair.migrate_continue())
    # qmp_migrate_continue only posts a semaphore; the migration thread leaves pre-switchover.
    await wait_left(ctx, "pre-switchover")


async def step_wait(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    """Source end, then destination end (or death), then :data:`SETTLE_AFTER_WAIT_S` more.

    After a source that failed or was cancelled, a destination that is loading (active) gets the whole
    bound (its end is certain); one that never started may never hear of it (a connect that failed): it
    gets only a short, silent bound. A wait with no migration started waits only the
    settle time."""
    pair = ctx.pair
    deadline = time.monotonic() + ctx.timeout
    if ctx.migration_started:
        status = await pair.wait_source_end(ctx.timeout)
        await _record_passes(ctx)
        if status == "completed" and pair.stream_transport is not None and not pair.stream_loaded:
            await command("migrate", pair.load_stream())
        if pair.incoming_uri is not None or pair.stream_loaded:
            remaining = max(1.0, deadline - time.monotonic())
            if status == "completed":
                await pair.wait_destination_end(remaining)
            elif status in ("failed", "cancelled") and await _destination_connected(pair):
                # A destination loading a precopy stream ends for sure once the source ended: its load
                # fails at the end of the stream the source closed (migration_cleanup) and, with
                # exit-on-error, it exits. The short bound would make that a matter of scheduling.
                with contextlib.suppress(MigrationTimeout):
                    await pair.wait_destination_end(remaining)
            else:
                with contextlib.suppress(MigrationTimeout):
                    await pair.wait_destination_end(min(remaining, DESTINATION_AFTER_FAILURE_S))
    await asyncio.sleep(SETTLE_AFTER_WAIT_S)
    # A VM that exited meanwhile is reaped now, so that final states see it gone.
    for vm in (pair.source, pair.destination):
        await vm.wait_exit(0)


async def step_vm_command(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    """``cont`` and ``stop``: the QMP command of the action's name on each side."""
    for side in sides:
        await command(stage, ctx.pair.side(side).qmp(step.action))


async def step_qmp(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    assert step.command is not None
    for side in sides:
        result = await command(stage, ctx.pair.side(side).qmp(step.command, dict(step.arguments)))
        ctx.outcome.extra.setdefault("qmp", []).append({"side": side, "command": step.command, "return": result})


async def step_snapshot_save(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    """QMP snapshot-save (a job): onto every writable block node that can take a snapshot, the VM
    state onto the first. A job that concludes with an error is a refusal carrying the job's error."""
    await _snapshot_job(ctx, step, stage, sides, "snapshot-save")


async def step_snapshot_load(ctx: StepContext, step: Step, stage: str, sides: Sides) -> None:
    """QMP snapshot-load (a job) with snapshot-save's arguments, waited for until it concludes: the job's error,
    which a raw ``qmp`` snapshot-load leaves unread in query-jobs, becomes the step's refusal."""
    await _snapshot_job(ctx, step, stage, sides, "snapshot-load")


async def _snapshot_job(ctx: StepContext, step: Step, stage: str, sides: Sides, job: str) -> None:
    for side in sides:
        vm = ctx.pair.side(side)
        ctx.snapshot_count += 1
        job_id = f"migconform-snapshot-{ctx.snapshot_count}"
        nodes: list[str] = []
        with contextlib.suppress(QmpCommandError):
            for block in await vm.qmp("query-block"):
                inserted = block.get("inserted")
                if inserted and not inserted.get("ro") and inserted.get("node-name"):
                    nodes.append(str(inserted["node-name"]))
        arguments = {
            "job-id": job_id,
            "tag": step.tag or "migconform",
            "vmstate": nodes[0] if nodes else "",
            "devices": nodes,
        }
        await command(stage, vm.run_job(job, arguments, SNAPSHOT_JOB_TIMEOUT_S))


# action -> handler, by the names contract.actions gives (EXECUTOR_HANDLERS); fails at import for a missing one.
STEP_HANDLERS: dict[str, StepHandler] = resolve_handlers(sys.modules[__name__], "executor")
