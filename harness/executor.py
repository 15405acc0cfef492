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
  destination has started its incoming migration (MigrationPair.wait_incoming_started);
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
states, the accelerator used, the duration, and the return values of ``qmp`` steps. Waits never depend
on events: they poll query-migrate and only wake early on an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.actions import resolve_handlers, stage_of
from contract.guest import GuestSpec
from contract.guest_rules import checked_side, effective_guest
from contract.outcome import Outcome, VmState
from contract.policy import DEFAULT_WAIT_TIMEOUT_S, POSTCOPY_PACING_BYTES_PER_S, paced_for_postcopy
from contract.scenario import Scenario, Step, VmSpec, expand_steps, migrate_transport
from harness.binaries import QemuBinary
from harness.errors import (
    GuestCheckError,
    HostEnvironmentError,
    JobTimeout,
    MigrationTimeout,
    QemuLaunchError,
    QmpCommandError,
    QmpConnectionError,
    ResourceUnavailable,
    VmDied,
    WaitTimeout,
)
from harness.guest.console import ConsoleError, GuestConsole
from harness.guest.image import GuestImage, GuestImageError, build_image
from harness.guest.session import GuestReport, guest_vm_args
from harness.guest.session import start as start_guest
from harness.guest.session import verify_blocking as verify_guest_blocking
from harness.linux_boot import probe_linux_boot
from harness.machine import QemuMachine
from harness.pair import END_STATUSES, MigrationPair
from harness.probe import (
    PROBE_LAUNCH_TIMEOUT_S,
    BinaryProbe,
    HostProbe,
    LinuxBootProbe,
    choose_accel,
    probe_binary,
    probe_host,
    userfaultfd_for,
)
from harness.results import HOST_SKIP, RESOURCE_SKIP, SKIP_KIND
from harness.vfio.allocator import AllocatedDevice, VfioDeviceAllocator, VfioUnavailable

NO_VFIO_PROVIDER = "no VFIO provider: run with --vfio-provider mtty or --vfio-device BDF"
# After the destination ended: how long to keep watching for a QEMU that dies while cleaning up.
SETTLE_AFTER_WAIT_S = 1.0
# Bound for start-postcopy / cancel waiting for the migration to leave setup.
LEAVE_SETUP_TIMEOUT_S = 10.0
SNAPSHOT_JOB_TIMEOUT_S = 30.0
# After a failed or cancelled source: how long the destination gets to notice before we stop waiting.
DESTINATION_AFTER_FAILURE_S = 5.0
# Whether to turn on the events capability on both sides before the steps (every outcome would then carry
# both sides' full MIGRATION sequences). Off: the run is exactly the contract's command sequence, and the
# model predicts what QEMU sends by itself: events only where the scenario enabled them, plus (measured)
# 7.2's destination "setup" at migrate-incoming, which it sends even with events off.
ENABLE_EVENTS = False
COMMAND_TIMEOUT_S = 30.0
# Bound for connecting to a freshly launched VM's serial console socket.
CONSOLE_CONNECT_TIMEOUT_S = 10.0
# Bound for a migrated guest's shell to answer before the check. A live guest answers within a second or two
# even under TCG on a loaded host (docs/guests.md: boot is 2-9 s, an already-booted shell much less); a guest
# that oopsed without panicking (seen on 7.2, docs/qemu-bugs.md 4) would otherwise cost the whole bound.
GUEST_PROMPT_TIMEOUT_S = 10.0
# Runstates the executor resumes before the guest check: the memory is there, the guest only has to run to
# answer (e.g. a source stopped by the scenario). Other non-running states have no guest (see reference_impl.guest).
RESUMABLE_RUNSTATES = frozenset({"paused", "postmigrate", "prelaunch"})


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


class _Refused(Exception):
    """A command of the scenario was refused: ends the scenario with verdict refused at ``stage``."""

    def __init__(self, stage: str, error: str) -> None:
        self.stage = stage
        self.error = error
        super().__init__(f"{stage}: {error}")


@dataclass
class _Launch:
    """What one VM needs besides its argv: the VFIO host devices allocated for this launch."""

    argv: list[str]
    allocated: list[AllocatedDevice] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # device id -> host name


def vm_args(spec: VmSpec, accel: str, cpu: str | None) -> list[str]:
    """The argv of one VM after the driver's own options: [vm] machine, memory, accel (+cpu),
    only-migratable, the scenario's ``args`` verbatim, then the structured devices (added by the caller)."""
    args = ["-machine", spec.machine, "-m", spec.memory, "-accel", accel]
    use_cpu = spec.cpu if spec.cpu is not None else cpu
    if use_cpu:
        args += ["-cpu", use_cpu]
    if spec.only_migratable:
        args.append("-only-migratable")
    args += list(spec.args)
    return args


@dataclass
class GuestCheck:
    """What a hook sees just before the memory check: the VM the guest lives on, and its console.

    For tests that must prove the check can fail (tests/guest/test_guest_scenarios.py): a hook may change the
    guest's memory behind its back (harness.guest.poke) before :func:`harness.guest.session.verify` runs.
    """

    side: str
    vm: QemuMachine
    console: GuestConsole
    workdir: Path


GuestHook = Callable[[GuestCheck], Awaitable[None]]
Sides = tuple[str, ...]  # the VMs a step runs on, in order


def guest_accel(
    spec: VmSpec,
    probe: BinaryProbe,
    host: HostProbe,
    linux_boot: Callable[[QemuBinary], LinuxBootProbe] = probe_linux_boot,
) -> tuple[str, str | None]:
    """Accelerator and CPU model for a VM that boots the guest image: KVM (with the probe's -cpu) only where
    harness.probe booted the guest image's kernel to its init under KVM (``linux_boot``), else TCG with
    ``-cpu max`` (the features TCG emulates; both QEMU versions accept it). Not probed is not yes: a KVM that
    cannot boot Linux would hang the guest until the boot timeout. An explicit [vm] accel wins.

    Blocking: the first call on a host may boot a VM for up to harness.linux_boot.LINUX_BOOT_BOUND_S; call it from a
    thread. ``host`` is not consulted (whatever the host's KVM is, the boot probe says what it does)."""
    del host
    if spec.accel != "auto":
        return spec.accel, None
    if not probe.kvm.usable or probe.kvm.cpu is None:
        return "tcg", "max"
    if linux_boot(probe.binary).boots is True:
        return "kvm", probe.kvm.cpu
    return "tcg", "max"


def guest_dict(report: GuestReport) -> dict[str, Any]:
    """Outcome.guest: what the comparison looks at (alive, bad_pages) and the informative pages_checked."""
    guest: dict[str, Any] = {
        "alive": report.alive,
        "pages_checked": report.pages_checked,
        "bad_pages": report.bad_pages,
    }
    if report.bad_pages and report.first_bad is not None:
        guest["first_bad"] = report.first_bad
    return guest


def unmet_requirement(
    scenario: Scenario, probe: BinaryProbe, host: HostProbe, allocator: VfioDeviceAllocator | None
) -> str | None:
    """Why the scenario cannot run here (the skip reason), or None."""
    uffd = userfaultfd_for(probe.binary, host)
    for need in scenario.requires:
        if need == "kvm" and not probe.kvm.usable:
            return f"requires KVM: {probe.kvm.reason}"
        if need == "uffd" and not uffd:
            return f"requires userfaultfd (as QEMU {probe.binary.version} opens it): {host.userfaultfd_detail}"
        if need == "uffd-wp" and not (uffd and host.uffd_wp):
            return f"requires UFFD write-protect: {host.uffd_wp_detail}"
        if need == "vfio" and allocator is None:
            return NO_VFIO_PROVIDER
    if allocator is None and (scenario.source.vfio_devices or scenario.destination.vfio_devices):
        return NO_VFIO_PROVIDER
    return None


class _ScenarioRun:
    """One execution: the pair, where it is in the steps, and the outcome being filled in."""

    def __init__(
        self,
        scenario: Scenario,
        binary: QemuBinary,
        workdir: Path,
        allocator: VfioDeviceAllocator | None,
        timeout: float,
        accels: tuple[str, str],
        cpus: tuple[str | None, str | None],
        outcome: Outcome,
        guest: tuple[GuestSpec, GuestImage] | None = None,
        guest_hook: GuestHook | None = None,
    ) -> None:
        self.scenario = scenario
        self.binary = binary
        self.workdir = workdir
        self.allocator = allocator
        self.timeout = timeout
        self.outcome = outcome
        self.launches = {
            "source": _Launch(vm_args(scenario.source, accels[0], cpus[0])),
            "destination": _Launch(vm_args(scenario.destination, accels[1], cpus[1])),
        }
        self.pair: MigrationPair | None = None
        self.migration_started = False
        self.snapshot_count = 0
        self.guest = guest
        self.guest_hook = guest_hook
        self.consoles: dict[str, GuestConsole] = {}
        self.guest_started = False
        # Set just before the source QEMU is launched: from then on a device the allocator cannot give is a
        # resource the run lost (ResourceUnavailable), no longer a reason to skip.
        self.source_launched = False

    # ------------------------------------------------------------------ VFIO

    def _allocate(self, side: str, spec: VmSpec) -> list[str]:
        """The ``-device`` arguments of ``spec``'s structured devices, VFIO host sides allocated now
        (once per launch: the mtty lab needs a fresh mdev for every QEMU, docs/vfio-lab.md P4)."""
        launch = self.launches[side]
        args: list[str] = []
        unnamed = 0
        for device in spec.devices:
            extra: Mapping[str, str] | None = None
            if device.driver == "vfio-pci":
                assert self.allocator is not None  # checked by unmet_requirement
                allocated = self.allocator.allocate(device)
                launch.allocated.append(allocated)
                extra = allocated.properties
                # Keyed like the model's placeholders (reference_impl.vfio.api.placeholder_name).
                if device.id is None:
                    launch.names[f"vfio-pci#{unnamed}"] = allocated.host_name
                    unnamed += 1
                else:
                    launch.names[device.id] = allocated.host_name
                self._record_vfio_names()
            args += ["-device", device.device_arg(extra)]
        return args

    def _release(self) -> None:
        if self.allocator is None:
            return
        for launch in self.launches.values():
            for allocated in launch.allocated:
                with contextlib.suppress(Exception):
                    self.allocator.release(allocated)
            launch.allocated.clear()

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        pair = MigrationPair(
            self.binary,
            self.launches["source"].argv,
            self.launches["destination"].argv,
            log_dir=self.workdir,
            # --timeout bounds every wait, QMP coming up included.
            launch_timeout=self.timeout,
            # A QMP command answers in milliseconds; one that takes this long has hung QEMU's monitor.
            command_timeout=min(self.timeout, COMMAND_TIMEOUT_S),
        )
        self.pair = pair
        if self.guest is not None:
            spec, image = self.guest
            for side in ("source", "destination"):
                socket_path = pair.private / f"{side}.console"
                pair.side(side).append_args(guest_vm_args(image, spec, side, console_socket=socket_path))
        try:
            await self._run_pair(pair)
            if self.guest_started and self.outcome.verdict != "skipped":
                await self._check_guest(pair)
        except VfioUnavailable as exc:
            why = str(exc) or "the VFIO provider cannot supply this device"
            if self.source_launched:
                # Known only after a QEMU started (the destination's device): the run should have had it.
                raise ResourceUnavailable("a VFIO device for the destination", why) from exc
            self.outcome.verdict = "skipped"
            self.outcome.skip_reason = why
            self.outcome.extra[SKIP_KIND] = RESOURCE_SKIP
        finally:
            for console in self.consoles.values():
                console.close()
            await self._record_events(pair)
            await pair.close()
            self._release()
            self._record_shutdown(pair)
            self._record_crashes(pair)

    def _record_shutdown(self, pair: MigrationPair) -> None:
        """A QEMU that ``quit`` did not end (stuck in migration_shutdown, a blocked monitor) is not part of
        the contract's outcome, but is worth a line: ``extra.shutdown`` = {side: what it took}."""
        notes = {vm.name: vm.shutdown_note for vm in (pair.source, pair.destination) if vm.shutdown_note}
        if notes:
            self.outcome.extra["shutdown"] = notes

    def _record_crashes(self, pair: MigrationPair) -> None:
        """A QEMU that died by a fault signal: ``extra.crash`` = {side: signal, the kernel's fault lines naming
        the thread}, so a crash is actionable without a core file. ``extra.query_guard``: waits of the
        destination's query guard that hit their bound (harness.listen_guard)."""
        crashes = {vm.name: record.as_extra() for vm in (pair.source, pair.destination) if (record := vm.crash())}
        if crashes:
            self.outcome.extra["crash"] = crashes
        if pair.guard_notes:
            self.outcome.extra["query_guard"] = list(pair.guard_notes)

    # ------------------------------------------------------------------ guest

    async def _connect_console(self, pair: MigrationPair, side: str) -> None:
        """Right after launch: QEMU's console socket (wait=off) drops what nobody reads, and a guest that
        panics after the switchover prints why only then."""
        path = pair.private / f"{side}.console"
        self.consoles[side] = await asyncio.to_thread(GuestConsole.connect, path, CONSOLE_CONNECT_TIMEOUT_S)

    async def _start_guest(self, pair: MigrationPair) -> None:
        """Boot to the prompt and start the workload on the source, every page filled, before the steps.

        A source guest that does not come up before any migration step is not QEMU's migration behaviour:
        the item ends with a :class:`GuestCheckError` (a harness error naming why), never a divergence and
        never an outcome whose guest check examined nothing."""
        assert self.guest is not None
        spec = self.guest[0]
        try:
            await self._connect_console(pair, "destination")
            await self._connect_console(pair, "source")
            await start_guest(self.consoles["source"], spec)
        except ConsoleError as exc:
            raise GuestCheckError("source", "the guest did not start before the steps", str(exc)) from exc
        self.guest_started = True

    async def _check_guest(self, pair: MigrationPair) -> None:
        """The memory check where the guest lives now (contract.guest.checked_side)."""
        side = checked_side(self.outcome)
        vm = pair.side(side)
        report: GuestReport | None = None
        if not vm.is_alive:
            report = GuestReport(alive=False, detail=f"the {side} VM is gone: {vm.died()}")
        else:
            try:
                runstate = await vm.runstate()
                if runstate in RESUMABLE_RUNSTATES:
                    await vm.qmp("cont")
                elif runstate == "inmigrate":
                    report = GuestReport(alive=False, detail=f"the {side} never loaded a guest (runstate inmigrate)")
            except (QmpCommandError, QmpConnectionError, VmDied) as exc:
                report = GuestReport(alive=False, detail=f"the {side} VM did not answer QMP: {exc}")
        if report is None:
            console = self.consoles[side]
            if self.guest_hook is not None:
                await self.guest_hook(GuestCheck(side, vm, console, self.workdir))
            report = await asyncio.to_thread(verify_guest_blocking, console, GUEST_PROMPT_TIMEOUT_S, side)
        self.outcome.guest = guest_dict(report)
        self.outcome.extra["guest_check"] = {
            "side": side,
            "torn": report.torn,
            "stale": report.stale,
            "future": report.future,
            "generation": report.generation,
            "detail": report.detail,
        }

    def _record_vfio_names(self) -> None:
        names = self.launches["source"].names
        if names:
            self.outcome.extra["vfio_names"] = dict(names)
        dest_names = self.launches["destination"].names
        if dest_names:
            self.outcome.extra["vfio_names_destination"] = dict(dest_names)

    async def _run_pair(self, pair: MigrationPair) -> None:
        pair.source.append_args(self._allocate("source", self.scenario.source))
        self.source_launched = True
        try:
            await pair.start_source()
        except QemuLaunchError as exc:
            if exc.exit_status is None:
                raise  # QEMU hung before QMP: a harness-level error, not QEMU refusing to start
            self._finish("refused", "startup", exc.message, None, None)
            return
        pair.destination.append_args(self._allocate("destination", self.scenario.destination))
        try:
            await pair.start_destination()
        except QemuLaunchError as exc:
            if exc.exit_status is None:
                raise
            source = await pair.final_state("source")
            self._finish("refused", "startup", exc.message, source, None)
            return
        if self.guest is not None:
            await self._start_guest(pair)
        try:
            if ENABLE_EVENTS:
                await self._enable_events(pair)
            for step in expand_steps(self.scenario):
                await self._step(pair, step)
        except _Refused as refusal:
            source, destination = await pair.final_states()
            self._finish("refused", refusal.stage, refusal.error, source, destination)
            return
        except VmDied as died:
            await self._finish_failed(pair, died_first=died)
            return
        except (WaitTimeout, QmpConnectionError) as exc:
            source, destination = await pair.final_states()
            self._finish("failed", "migration", str(exc), source, destination)
            return
        await self._finish_failed(pair, died_first=None)

    async def _enable_events(self, pair: MigrationPair) -> None:
        for side in ("source", "destination"):
            with contextlib.suppress(QmpCommandError):
                await pair.set_capabilities(side, {"events": True})

    async def _finish_failed(self, pair: MigrationPair, died_first: VmDied | None) -> None:
        """The end of a run that was not refused: completed, or failed because a migration failed or a
        VM died. Error precedence (contract): error-desc (source, then destination), then why a VM died,
        then QEMU's last stderr line."""
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
            self._finish("completed", None, None, source, destination)
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
        self._finish("failed", "migration", error, source, destination)

    def _finish(
        self, verdict: str, stage: str | None, error: str | None, source: VmState | None, destination: VmState | None
    ) -> None:
        self.outcome.verdict = verdict
        self.outcome.stage = stage
        self.outcome.error = error
        self.outcome.source = source
        self.outcome.destination = destination
        if self.pair is not None and self.pair.last_unsettled is not None and (source or destination):
            # Informative: the states were read at the settle bound, not at a quiescent point.
            self.outcome.extra["unsettled"] = self.pair.last_unsettled

    async def _record_events(self, pair: MigrationPair) -> None:
        if self.outcome.verdict == "skipped":
            return
        self.outcome.events = {
            "source": pair.source.migration_events(),
            "destination": pair.destination.migration_events(),
        }
        states: dict[str, list[str]] = {}
        states.update(pair.source.vfio_states())
        for device, sequence in pair.destination.vfio_states().items():
            states[f"destination:{device}"] = sequence
        if states:
            self.outcome.vfio_states = states

    # ------------------------------------------------------------------ steps

    async def _command(self, stage: str, command: Any) -> Any:
        """Await one QMP interaction of a step; a QEMU error becomes the scenario's refusal at ``stage``."""
        try:
            return await command
        except QmpCommandError as exc:
            raise _Refused(stage, exc.desc) from None

    async def _step(self, pair: MigrationPair, step: Step) -> None:
        """One step, by the handler contract.actions names for its action."""
        handler = _STEP_HANDLERS.get(step.action)
        if handler is None:
            raise ValueError(f"unknown action {step.action!r}")
        sides = ("source", "destination") if step.side == "both" else (step.side,)
        await handler(self, pair, step, stage_of(step.action), sides)

    async def step_set_capabilities(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        for side in sides:
            await self._command(stage, pair.set_capabilities(side, step.capabilities))

    async def step_set_parameters(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        for side in sides:
            await self._command(stage, pair.set_parameters(side, step.parameters))

    async def step_migrate(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        transport = migrate_transport(self.scenario, step)
        for side in sides:
            if side == "destination":
                # Migrating out of the destination: the pre-checks (e.g. "Guest is waiting for an
                # incoming migration") are what such a step tests; the stream goes nowhere useful.
                await self._command(stage, pair.migrate_from_destination(transport))
                continue
            await self._pace_for_postcopy(pair)
            await self._command(stage, pair.migrate(transport))
            self.migration_started = True
            # Both sides leave setup before the next step, so that a scenario that ends while the
            # migration is still running sees one status on each side (active), not setup or active
            # depending on which QEMU got the CPU first.
            status = await self._wait_left_setup(pair)
            if status is not None:
                with contextlib.suppress(MigrationTimeout):
                    await pair.wait_incoming_started(status, self._settle_bound())

    async def step_start_postcopy(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        await self._wait_left_setup(pair)
        await self._command(stage, pair.start_postcopy())
        # migrate-start-postcopy only raises a flag (qmp_migrate_start_postcopy); the migration thread
        # switches (postcopy_start) or completes on its next iteration.
        await self._wait_left(pair, "active")

    async def step_cancel(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        await self._wait_left_setup(pair)
        await self._command(stage, pair.cancel())
        # migrate_fd_cancel sets cancelling; migration_cleanup (a bottom half) sets cancelled.
        await self._wait_left(pair, "cancelling")

    async def step_migrate_continue(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        await self._command(stage, pair.migrate_continue())
        # qmp_migrate_continue only posts a semaphore; the migration thread leaves pre-switchover.
        await self._wait_left(pair, "pre-switchover")

    async def step_wait(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        await self._wait(pair)

    async def step_vm_command(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        for side in sides:
            await self._command(stage, pair.side(side).qmp(step.action))

    async def step_qmp(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        assert step.command is not None
        for side in sides:
            result = await self._command(stage, pair.side(side).qmp(step.command, dict(step.arguments)))
            self.outcome.extra.setdefault("qmp", []).append({"side": side, "command": step.command, "return": result})

    async def step_snapshot_save(self, pair: MigrationPair, step: Step, stage: str, sides: Sides) -> None:
        for side in sides:
            await self._snapshot_save(pair, side, step, stage)

    async def _pace_for_postcopy(self, pair: MigrationPair) -> None:
        """Make a scenario's ``start-postcopy`` switch a real one.

        A VM without a guest OS has almost only zero pages, so an unthrottled precopy ends before
        ``migrate-start-postcopy`` arrives and postcopy never runs. Like QEMU's own tests
        (migrate_ensure_non_converge), throttle the precopy phase; postcopy itself is limited only by
        max-postcopy-bandwidth (default unlimited), so the rest then goes at full speed. A scenario that sets
        max-bandwidth itself keeps its own value.
        """
        if not paced_for_postcopy(expand_steps(self.scenario)):
            return
        with contextlib.suppress(QmpCommandError):
            await pair.set_parameters("source", {"max-bandwidth": POSTCOPY_PACING_BYTES_PER_S})

    def _settle_bound(self) -> float:
        return min(self.timeout, LEAVE_SETUP_TIMEOUT_S)

    async def _wait_left_setup(self, pair: MigrationPair) -> str | None:
        """Bounded; a migration that ends (or never started) meanwhile is left to the command to judge.
        The source's status once past setup, or None (no migration, or still in setup at the bound)."""
        if not self.migration_started:
            return None
        with contextlib.suppress(MigrationTimeout):
            return await pair.wait_left_setup(self._settle_bound())
        return None

    async def _wait_left(self, pair: MigrationPair, status: str) -> None:
        """After a command QEMU carries out asynchronously: until the source has left ``status`` (bounded;
        a source still there at the bound is what the next step, or the final states, see)."""
        if not self.migration_started:
            return
        with contextlib.suppress(MigrationTimeout):
            await pair.wait_status_left("source", status, self._settle_bound())

    async def _wait(self, pair: MigrationPair) -> None:
        """Source end, then destination end (or death), then :data:`SETTLE_AFTER_WAIT_S` more.

        After a source that failed or was cancelled, a destination that is loading (active) gets the whole
        bound (its end is certain); one that never started may never hear of it (a connect that failed): it
        gets only a short, silent bound. A wait with no migration started waits only the
        settle time."""
        deadline = time.monotonic() + self.timeout
        if self.migration_started:
            status = await pair.wait_source_end(self.timeout)
            await self._record_passes(pair)
            if status == "completed" and pair.stream_transport is not None and not pair.stream_loaded:
                await self._command("migrate", pair.load_stream())
            if pair.incoming_uri is not None or pair.stream_loaded:
                remaining = max(1.0, deadline - time.monotonic())
                if status == "completed":
                    await pair.wait_destination_end(remaining)
                elif status in ("failed", "cancelled") and await self._destination_connected(pair):
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

    @staticmethod
    async def _destination_connected(pair: MigrationPair) -> bool:
        """Whether the destination is loading a precopy stream (status active), so that its end is certain."""
        if not pair.destination.is_alive:
            return False
        with contextlib.suppress(QmpCommandError, QmpConnectionError, VmDied):
            return await pair.destination.query_migrate_status() == "active"
        return False

    async def _record_passes(self, pair: MigrationPair) -> None:
        """How many times precopy synced the dirty log, and how many pages postcopy faulted in: evidence that
        a guest scenario iterated (or switched) as it means to. Informative; one entry per migration."""
        with contextlib.suppress(QmpCommandError, QmpConnectionError, VmDied):
            ram = (await pair.source.query_migrate()).get("ram") or {}
            passes = {key: ram[key] for key in ("dirty-sync-count", "postcopy-requests") if key in ram}
            if passes:
                self.outcome.extra.setdefault("ram_passes", []).append(passes)

    async def _snapshot_save(self, pair: MigrationPair, side: str, step: Step, stage: str) -> None:
        """QMP snapshot-save (a job): onto every writable block node that can take a snapshot, the VM
        state onto the first. A job that concludes with an error is a refusal carrying the job's error."""
        vm = pair.side(side)
        self.snapshot_count += 1
        job_id = f"migconform-snapshot-{self.snapshot_count}"
        nodes: list[str] = []
        with contextlib.suppress(QmpCommandError):
            for block in await vm.qmp("query-block"):
                inserted = block.get("inserted")
                if inserted and not inserted.get("ro") and inserted.get("node-name"):
                    nodes.append(str(inserted["node-name"]))
        await self._command(
            stage,
            vm.qmp(
                "snapshot-save",
                {
                    "job-id": job_id,
                    "tag": step.tag or "migconform",
                    "vmstate": nodes[0] if nodes else "",
                    "devices": nodes,
                },
            ),
        )
        deadline = time.monotonic() + SNAPSHOT_JOB_TIMEOUT_S
        while True:
            jobs = await vm.qmp("query-jobs")
            job = next((j for j in jobs if j.get("id") == job_id), None)
            if job is None or job.get("status") == "concluded":
                break
            if time.monotonic() > deadline:
                raise JobTimeout(f"snapshot-save job {job_id}", SNAPSHOT_JOB_TIMEOUT_S, str(job.get("status")))
            await asyncio.sleep(0.02)
        if job is not None:
            with contextlib.suppress(QmpCommandError):
                await vm.qmp("job-dismiss", id=job_id)
            if job.get("error"):
                raise _Refused(stage, str(job["error"]))


# action -> _ScenarioRun's handler (contract.actions names them); fails at import for a missing one.
_STEP_HANDLERS: dict[str, Any] = resolve_handlers(_ScenarioRun, "executor")


async def execute(
    scenario: Scenario,
    binary: QemuBinary,
    *,
    workdir: Path,
    allocator: VfioDeviceAllocator | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    guest_hook: GuestHook | None = None,
) -> Outcome:
    """Run ``scenario`` on ``binary``; logs of both QEMUs go to ``workdir``. ``timeout`` bounds each wait
    (QMP commands get at most :data:`COMMAND_TIMEOUT_S`). Never leaves a QEMU running, whatever happens
    (including cancellation).

    A scenario with a guest (``[guest]`` or ``requires = ["guest"]``) boots the guest image on both sides,
    starts the workload on the source before the steps and checks the guest's memory afterwards
    (``Outcome.guest``); ``guest_hook`` runs just before that check.

    QEMU's own behaviour always ends in an :class:`Outcome`. Raises (a :class:`MigconformError`) only for
    what is not QEMU's answer: a QEMU that hung before offering QMP, a QMP protocol failure, a VFIO
    allocator error other than :class:`VfioUnavailable`, :class:`HostResourceExhausted` (a
    :class:`HostEnvironmentError`) when QEMU refused or failed for want of host memory, disk or file
    descriptors (:func:`host_errno`), and :class:`ResourceUnavailable` for a resource the
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
    probe, host = await asyncio.gather(
        asyncio.to_thread(probe_binary, binary, min(timeout, PROBE_LAUNCH_TIMEOUT_S)), asyncio.to_thread(probe_host)
    )
    outcome.kernel = host.kernel
    if allocator is not None:
        outcome.vfio_provider = allocator.name
    reason = unmet_requirement(scenario, probe, host, allocator)
    guest_spec = effective_guest(scenario)
    guest: tuple[GuestSpec, GuestImage] | None = None
    kind = RESOURCE_SKIP if reason == NO_VFIO_PROVIDER else HOST_SKIP
    if guest_spec is not None and reason is None:
        try:
            guest = (guest_spec, await asyncio.to_thread(build_image))
        except GuestImageError as exc:
            # A guest the scenario needs and the run could not build: an error of the item, never a skip.
            raise ResourceUnavailable("the guest image", str(exc)) from exc
    accels: list[str] = []
    cpus: list[str | None] = []
    for spec in (scenario.source, scenario.destination):
        # A scenario that requires KVM means its VMs to run on it, even when auto would pick TCG here.
        requested = "kvm" if spec.accel == "auto" and "kvm" in scenario.requires else spec.accel
        if guest_spec is not None and requested == "auto":
            guest_accelerator, guest_cpu = await asyncio.to_thread(guest_accel, spec, probe, host)
            accels.append(guest_accelerator)
            cpus.append(guest_cpu)
            continue
        accel, why = choose_accel(requested, probe, host)
        if accel is None:
            reason = reason or why
        accels.append(accel or "tcg")
        cpus.append(probe.kvm.cpu if accel == "kvm" else None)
    outcome.accel = accels[0] if accels[0] == accels[1] else f"{accels[0]}/{accels[1]}"
    if reason is not None:
        outcome.verdict = "skipped"
        outcome.skip_reason = reason
        outcome.extra[SKIP_KIND] = kind
        outcome.duration_s = round(time.monotonic() - started, 3)
        return outcome
    workdir.mkdir(parents=True, exist_ok=True)
    run = _ScenarioRun(
        scenario,
        binary,
        workdir,
        allocator,
        timeout,
        (accels[0], accels[1]),
        (cpus[0], cpus[1]),
        outcome,
        guest=guest,
        guest_hook=guest_hook,
    )
    await run.run()
    outcome.duration_s = round(time.monotonic() - started, 3)
    errno_name = host_errno(outcome.error) if outcome.verdict in ("refused", "failed") else None
    if errno_name is not None:
        raise HostResourceExhausted(errno_name, outcome)
    if outcome.source is not None and outcome.source.status not in END_STATUSES | {"none"}:
        outcome.extra.setdefault("note", "the migration was still running at the end of the scenario")
    return outcome


def run_scenario(
    scenario: Scenario,
    binary: QemuBinary,
    *,
    workdir: Path,
    allocator: VfioDeviceAllocator | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    guest_hook: GuestHook | None = None,
) -> Outcome:
    """Synchronous :func:`execute` (tests, scripts). Inside a running event loop it runs on a fresh
    thread with its own loop, so it can be called from anywhere."""
    coro_args: dict[str, Any] = {
        "workdir": workdir,
        "allocator": allocator,
        "timeout": timeout,
        "guest_hook": guest_hook,
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
