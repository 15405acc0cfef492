"""A scenario against a real QEMU binary: :func:`execute` returns the contract's :class:`Outcome`.

This is the section "How a scenario is executed" of docs/scenario-format.md, step for step,
so that a result means the same on every machine:

- the source starts first; if QEMU refuses to start it, no destination is started (both sides null,
  verdict refused, stage startup, error = QEMU's message without its prefixes);
- the destination starts with ``-incoming defer``;
- the steps are :func:`contract.scenario.expand_steps` (the model executes the same list);
- ``migrate`` over tcp/unix runs migrate-incoming on the destination first (tcp: 127.0.0.1 port 0, the
  port read back), once; over file/exec the source writes into a private folder and ``wait`` loads the
  stream into the destination after the source completed;
- start-postcopy and cancel first wait (bounded) until the migration has left setup;

Beyond the contract's list, so that a state the executor reads never depends on which QEMU thread got the
CPU first (docs/scenario-format.md, "How a scenario is executed", lists these rules):

- ``migrate`` waits (bounded) until the source has left setup and, when that proves a connection, until the
  destination has started its incoming migration (MigrationPair.wait_incoming_started); a ``migrate`` issued
  on the destination waits (bounded) until the destination has left setup;
- cancel, start-postcopy and migrate-continue wait (bounded) until the source has left cancelling / active /
  pre-switchover;
- wait: after a source that did not complete, a destination that is loading (active) gets the full bound;
- final states are read at a quiescent point (harness.pair.unsettled), bounded; else ``extra.unsettled``;
- wait = until the source ends, then until the destination ends or dies, then one more second, so a QEMU
  that crashes while cleaning up is seen as gone;
- the first refused command ends the scenario; a VM that died is null and makes the verdict failed.

Beyond the contract (recorded in the outcome's extensions): each side's MIGRATION status sequence (QEMU
sends them only where the scenario turned the ``events`` capability on; the executor adds no command of
its own unless :data:`ENABLE_EVENTS`, so the model predicts the lists exactly), VFIO_MIGRATION device
states, the accelerator used, the duration, and the return values of ``qmp`` steps. Migration waits never
depend on MIGRATION events: they poll query-migrate and only wake early on an event. A snapshot-save job is
awaited on its JOB_STATUS_CHANGE events (QemuMachine.run_job), which QEMU sends whatever the capabilities.

The parts live in harness.execution: preflight (the plan, before any QEMU starts), vfio, guest, steps (one
handler per action) and verdict (which way of ending wins); this module only puts them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from contract.outcome import Outcome
from contract.policy import DEFAULT_WAIT_TIMEOUT_S
from contract.scenario import Scenario, expand_steps
from harness.binaries import QemuBinary
from harness.errors import QemuLaunchError, QmpCommandError, ResourceUnavailable
from harness.execution.guest import GuestHook, GuestRun
from harness.execution.preflight import Plan, preflight
from harness.execution.record import record_events, record_exit
from harness.execution.steps import StepContext, run_step
from harness.execution.verdict import STEP_ENDINGS, conclude, finish, judge
from harness.execution.vfio import LaunchDevices
from harness.pair import MigrationPair
from harness.results import RESOURCE_SKIP, SKIP_KIND
from harness.vfio.allocator import VfioDeviceAllocator, VfioUnavailable

# Whether to turn on the events capability on both sides before the steps (every outcome would then carry
# both sides' full MIGRATION sequences). Off: the run is exactly the contract's command sequence, and the
# model predicts what QEMU sends by itself: events only where the scenario enabled them, plus (measured)
# 7.2's destination "setup" at migrate-incoming, which it sends even with events off.
ENABLE_EVENTS = False
COMMAND_TIMEOUT_S = 30.0


class _ScenarioRun:
    """One execution once the plan says it runs: the pair, its devices and guest, and the outcome."""

    def __init__(
        self,
        scenario: Scenario,
        binary: QemuBinary,
        workdir: Path,
        allocator: VfioDeviceAllocator | None,
        timeout: float,
        plan: Plan,
        outcome: Outcome,
        guest_hook: GuestHook | None,
        destination_binary: QemuBinary | None = None,
    ) -> None:
        self.scenario = scenario
        self.binary = binary
        self.destination_binary = destination_binary
        self.workdir = workdir
        self.timeout = timeout
        self.plan = plan
        self.outcome = outcome
        self.devices = LaunchDevices(allocator, outcome)
        self.guest = GuestRun(*plan.guest, guest_hook, workdir, outcome) if plan.guest is not None else None
        # Set just before the source QEMU is launched: from then on a device the allocator cannot give is a
        # resource the run lost (ResourceUnavailable), no longer a reason to skip.
        self.source_launched = False

    async def run(self) -> None:
        pair = MigrationPair(
            self.binary,
            self.plan.argv["source"],
            self.plan.argv["destination"],
            log_dir=self.workdir,
            # --timeout bounds every wait, QMP coming up included.
            launch_timeout=self.timeout,
            # A QMP command answers in milliseconds; one that takes this long has hung QEMU's monitor.
            command_timeout=min(self.timeout, COMMAND_TIMEOUT_S),
            destination_binary=self.destination_binary,
        )
        if self.guest is not None:
            self.guest.add_args(pair)
        try:
            await self._run_pair(pair)
            if self.guest is not None and self.guest.started and self.outcome.verdict != "skipped":
                await self.guest.check(pair)
        except VfioUnavailable as exc:
            why = str(exc) or "the VFIO provider cannot supply this device"
            if self.source_launched:
                # Known only after a QEMU started (the destination's device): the run should have had it.
                raise ResourceUnavailable("a VFIO device for the destination", why) from exc
            self.outcome.verdict = "skipped"
            self.outcome.skip_reason = why
            self.outcome.extra[SKIP_KIND] = RESOURCE_SKIP
        finally:
            if self.guest is not None:
                self.guest.close()
            record_events(self.outcome, pair)
            await pair.close()
            self.devices.release()
            record_exit(self.outcome, pair)

    async def _run_pair(self, pair: MigrationPair) -> None:
        pair.source.append_args(self.devices.device_args("source", self.scenario.source))
        self.source_launched = True
        try:
            await pair.start_source()
        except QemuLaunchError as exc:
            if exc.exit_status is None:
                raise  # QEMU hung before QMP: a harness-level error, not QEMU refusing to start
            finish(self.outcome, pair, "refused", "startup", exc.message, None, None)
            return
        pair.destination.append_args(self.devices.device_args("destination", self.scenario.destination))
        try:
            await pair.start_destination()
        except QemuLaunchError as exc:
            if exc.exit_status is None:
                raise
            source = await pair.final_state("source")
            finish(self.outcome, pair, "refused", "startup", exc.message, source, None)
            return
        if self.guest is not None:
            await self.guest.start(pair)
        context = StepContext(self.scenario, pair, self.outcome, self.timeout)
        ended: BaseException | None = None
        try:
            if ENABLE_EVENTS:
                for side in ("source", "destination"):
                    with contextlib.suppress(QmpCommandError):
                        await pair.set_capabilities(side, {"events": True})
            for step in expand_steps(self.scenario):
                await run_step(context, step)
        except STEP_ENDINGS as exc:
            ended = exc
        await judge(self.outcome, pair, ended)


async def execute(
    scenario: Scenario,
    binary: QemuBinary,
    *,
    workdir: Path,
    allocator: VfioDeviceAllocator | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    guest_hook: GuestHook | None = None,
    destination_binary: QemuBinary | None = None,
) -> Outcome:
    """Run ``scenario`` on ``binary`` (the destination on ``destination_binary`` when given: a cross-version
    item, ``Outcome.destination_qemu_version``; each side probed and started as its own binary); logs of
    both QEMUs go to ``workdir``. ``timeout`` bounds each wait (QMP commands get at most
    :data:`COMMAND_TIMEOUT_S`). Never leaves a QEMU running, whatever happens
    (including cancellation).

    A scenario with a guest (``[guest]`` or ``requires = ["guest"]``) boots the guest image on both sides,
    starts the workload on the source before the steps and checks the guest's memory afterwards
    (``Outcome.guest``); ``guest_hook`` runs just before that check.

    QEMU's own behaviour always ends in an :class:`Outcome`. Raises (a :class:`MigconformError`) only for
    what is not QEMU's answer: a QEMU that hung before offering QMP, a QMP protocol failure, a VFIO
    allocator error other than :class:`VfioUnavailable`, :class:`HostResourceExhausted` (a
    :class:`HostEnvironmentError`) when QEMU refused or failed for want of host memory, disk or file
    descriptors (harness.execution.verdict.host_errno), and :class:`ResourceUnavailable` for a resource the
    run should have had: a guest image that cannot be built, a VFIO device the allocator cannot give once
    the source started (or that it lost: an exhausted mdev pool). Skipped (``verdict`` skipped, the reason,
    and ``extra["skip_kind"]``) is only what is known before any QEMU starts and is about what this host
    offers: a capability the scenario declares in ``requires`` or an accelerator it asks for (kind
    ``host``), no VFIO provider or a personality the provider does not have (kind ``resource``).
    """
    started = time.monotonic()
    outcome = Outcome(
        scenario=scenario.id,
        backend="qemu",
        qemu_version=str(binary.version),
        verdict="completed",
        binary=binary.path,
    )
    if destination_binary is not None:
        outcome.destination_qemu_version = str(destination_binary.version)
        outcome.extra["destination_binary"] = destination_binary.path
    plan = await preflight(scenario, binary, allocator, timeout, destination_binary)
    outcome.kernel = plan.kernel
    if allocator is not None:
        outcome.vfio_provider = allocator.name
    outcome.accel = plan.accel
    if plan.skip_reason is not None:
        outcome.verdict = "skipped"
        outcome.skip_reason = plan.skip_reason
        outcome.extra[SKIP_KIND] = plan.skip_kind
        outcome.duration_s = round(time.monotonic() - started, 3)
        return outcome
    workdir.mkdir(parents=True, exist_ok=True)
    run = _ScenarioRun(scenario, binary, workdir, allocator, timeout, plan, outcome, guest_hook, destination_binary)
    await run.run()
    outcome.duration_s = round(time.monotonic() - started, 3)
    return conclude(outcome)


def run_scenario(
    scenario: Scenario,
    binary: QemuBinary,
    *,
    workdir: Path,
    allocator: VfioDeviceAllocator | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    guest_hook: GuestHook | None = None,
    destination_binary: QemuBinary | None = None,
) -> Outcome:
    """Synchronous :func:`execute` (tests, scripts). Inside a running event loop it runs on a fresh
    thread with its own loop, so it can be called from anywhere."""
    coro_args: dict[str, Any] = {
        "workdir": workdir,
        "allocator": allocator,
        "timeout": timeout,
        "guest_hook": guest_hook,
        "destination_binary": destination_binary,
    }
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(execute(scenario, binary, **coro_args))
    result: list[Outcome] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(execute(scenario, binary, **coro_args)))
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"migconform-{scenario.id}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
