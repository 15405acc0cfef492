"""Differential runner: every scenario on every target, real QEMU and the model side by side.

A target is a QEMU binary (the model then runs at that binary's version, with the host facts probed for
it) or, for ``--backend reference --profile X``, a model profile alone. Scenarios run concurrently
(``jobs``, an asyncio semaphore); each has its own VMs, sockets and ports (the executor's job), so the
only shared state is the results, which are rewritten atomically after every completed item.

VFIO scenarios need a host device. With a provider (``--vfio-provider``) they go to it as one batch
(the mtty lab boots a nested guest once for all of them); without one the executor, given no allocator,
skips the real side with its reason and the model still runs.

Each item's QEMUs log into a folder of their own under the logs root (``--logs-dir``), kept or removed
as ``--keep-logs`` says (harness.item_logs); each finished item goes into the results through
harness.recorder. The columns are harness.targets', the slices harness.shards'.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.policy import DEFAULT_WAIT_TIMEOUT_S
from contract.scenario import Scenario
from contract.versions import profile_note
from harness import procutil
from harness.cross_targets import cross_meta, missing_outcome
from harness.errors import VfioSetupError
from harness.host_commands import refuse_host_commands
from harness.item_logs import ItemLogs
from harness.progress import Progress
from harness.recorder import ItemRecorder
from harness.results import Floor, Results, WorkItem
from harness.targets import Target
from harness.vfio_batch import run_vfio_batch, runs_pairs, with_kernel

if TYPE_CHECKING:
    from harness.binaries import QemuBinary
    from harness.vfio.allocator import VfioDeviceAllocator

BACKENDS = ("both", "reference", "qemu")
KEEP_LOGS = ("all", "failed", "none")

ExecuteFn = Callable[..., Awaitable[Outcome]]
# (scenario, version, host), and the destination's version 4th for a cross-version item only.
PredictFn = Callable[..., Outcome]
HostFactsFn = Callable[["QemuBinary", str], HostFacts]


class ProviderUnavailable(VfioSetupError):
    """The named VFIO provider cannot be used here (not installed, unknown name, bad options)."""


class VfioProvider(Protocol):
    """What harness.vfio.provider.get_provider returns (the VFIO lab, or a real device)."""

    async def run_batch(self, scenarios: Sequence[Scenario], binaries: Sequence[QemuBinary]) -> list[Outcome]: ...

    def host_facts(self) -> HostFacts: ...


def needs_vfio(scenario: Scenario) -> bool:
    return "vfio" in scenario.requires or bool(scenario.source.vfio_devices or scenario.destination.vfio_devices)


def default_predict() -> PredictFn:
    """The model's entry point, imported late so that loading and reporting work without it."""
    import importlib

    module = importlib.import_module("reference_impl")
    fn = getattr(module, "predict", None)
    if fn is None or not callable(fn):
        fn = importlib.import_module("reference_impl.predict").predict
    return fn  # type: ignore[no-any-return]


def default_execute() -> ExecuteFn:
    from harness.executor import execute

    return execute


def default_host_facts() -> HostFactsFn:
    from harness.probe import host_facts

    return host_facts


@dataclass
class RunOptions:
    backend: str = "both"
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    json_path: Path | None = None
    timeout: float = DEFAULT_WAIT_TIMEOUT_S
    vfio_provider: str | None = None
    vfio_options: dict[str, Any] = field(default_factory=dict)
    progress: TextIO | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # --no-exec: refuse scenarios that would run a host command (harness.host_commands) before any
    # QEMU starts, also when the scenarios did not come through the CLI's loader.
    no_exec: bool = False
    # injectable backends (unit tests of the runner's bookkeeping use fakes)
    execute: ExecuteFn | None = None
    predict: PredictFn | None = None
    host_facts: HostFactsFn | None = None
    provider: VfioProvider | None = None
    # Real host devices (--vfio-device): the executor asks this allocator for each launch's devices.
    allocator: VfioDeviceAllocator | None = None
    # Where each item's QEMU logs go (``<logs_dir>/<item_log_name>/``); None: a temporary folder, never kept.
    logs_dir: Path | None = None
    keep_logs: str = "failed"  # one of KEEP_LOGS
    # Coverage floor (--require-all, --min-compared): a run that compared less fails (harness.results.Floor).
    require_all: bool = False
    min_compared: int | None = None
    # --repeat N: the real side of every item runs N times (the model once); Results.stability says how
    # many runs agreed and which distinct outcomes were seen.
    repeat: int = 1


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


Item = tuple[Scenario, Target]


class _Run:
    def __init__(
        self,
        scenarios: Sequence[Scenario],
        targets: Sequence[Target],
        options: RunOptions,
        items: Sequence[Item] | None = None,
    ):
        if options.backend not in BACKENDS:
            raise ValueError(f"unknown backend {options.backend!r} (allowed: {', '.join(BACKENDS)})")
        if options.keep_logs not in KEEP_LOGS:
            raise ValueError(f"unknown --keep-logs {options.keep_logs!r} (allowed: {', '.join(KEEP_LOGS)})")
        self.scenarios = list(scenarios)
        self.targets = list(targets)
        # harness.cross_targets' items (pinned sides, cross-version pairs); default: every scenario on every target
        self.items = list(items) if items is not None else [(s, t) for s in self.scenarios for t in self.targets]
        self.options = options
        self.results = Results(meta=self._meta())
        floor = Floor(options.require_all, options.min_compared)
        self.results.floor = floor if floor.active else None
        pairs = self.items if items is not None else [(s, t) for t in self.targets for s in self.scenarios]
        self.results.not_run = [WorkItem(s.id, t.column) for s, t in pairs]
        self.progress = Progress(options.progress, len(self.results.not_run))
        self._facts: dict[tuple[str, str], HostFacts] = {}
        self._facts_lock = asyncio.Lock()
        self._vfio_lock = asyncio.Lock()
        self._execute = options.execute
        self._predict = options.predict
        self._host_facts = options.host_facts
        self.logs = ItemLogs(options)
        self.recorder = ItemRecorder(self.results, options.json_path, self.progress, self.logs)

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "backend": self.options.backend,
            "binaries": [
                {"path": str(t.binary.path), "version": str(t.version), "label": t.binary.label, "column": t.column}
                for t in self.targets
                if t.binary is not None
            ],
            "versions": [t.column for t in self.targets],
            **cross_meta(self.items),
            "host": platform.node(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "jobs": self.options.jobs,
            "scenarios": len(self.scenarios),
            "descriptions": {s.id: s.description for s in self.scenarios if s.description},
            "start": _now(),
        }
        if self.options.logs_dir is not None:
            meta["logs_dir"] = str(self.options.logs_dir.resolve())
            meta["keep_logs"] = self.options.keep_logs
        meta.update(self.options.meta)
        return meta

    # ---- backends -------------------------------------------------------------------------------------
    def execute_fn(self) -> ExecuteFn:
        if self._execute is None:
            self._execute = default_execute()
        return self._execute

    def predict_fn(self) -> PredictFn:
        if self._predict is None:
            self._predict = default_predict()
        return self._predict

    async def facts(self, target: Target, accel: str) -> HostFacts:
        """Host facts for the model: probed once per binary and accelerator (the model is a pure function)."""
        if target.binary is None:
            return HostFacts(kernel=platform.release())
        key = (str(target.binary.path), accel)
        async with self._facts_lock:
            if key not in self._facts:
                if self._host_facts is None:
                    self._host_facts = default_host_facts()
                self._facts[key] = await asyncio.to_thread(self._host_facts, target.binary, accel)
            return self._facts[key]

    # ---- one item -------------------------------------------------------------------------------------
    async def run_real(self, scenario: Scenario, target: Target, workdir: Path) -> Outcome:
        assert target.binary is not None
        allocator = self.options.allocator if needs_vfio(scenario) else None
        execute = self.execute_fn()
        # The executor bounds every wait itself; this outer bound only catches a hung executor.
        # The destination's binary only for a cross-version item: plain items call the executor as before.
        cross = {"destination_binary": target.destination_binary} if target.destination_binary is not None else {}
        coro = execute(
            scenario, target.binary, workdir=workdir, allocator=allocator, timeout=self.options.timeout, **cross
        )
        bound = self.options.timeout * 3 + 30
        if allocator is None:
            return await asyncio.wait_for(coro, timeout=bound)
        # Host devices are few (often one per side): VFIO scenarios take turns.
        async with self._vfio_lock:
            return await asyncio.wait_for(coro, timeout=bound)

    async def run_model(self, scenario: Scenario, target: Target, accel: str) -> Outcome:
        host = await self.facts(target, accel)
        outcome = with_kernel(self.predict_item(scenario, target, host), host)
        note = profile_note(target.version)
        if note is not None:
            outcome.extra["profile_note"] = note
        return outcome

    def predict_item(self, scenario: Scenario, target: Target, host: HostFacts) -> Outcome:
        """The model's outcome; a cross-version item's destination version goes to the model as well."""
        if target.destination_version is None:
            return self.predict_fn()(scenario, target.version, host)
        return self.predict_fn()(scenario, target.version, host, target.destination_version)

    async def run_item(self, scenario: Scenario, target: Target, semaphore: asyncio.Semaphore) -> None:
        if target.missing is not None:
            # A pinned QEMU this run lacks: nothing runs, and the skip says what is missing.
            self.recorder.record(scenario, target, {"qemu": missing_outcome(scenario, target)})
            return
        async with semaphore:
            outcomes: dict[str, Outcome | BaseException] = {}
            backend = self.options.backend
            accel = scenario.source.accel
            workdir: Path | None = None
            try:
                reals: list[Outcome | BaseException] = []
                rounds = max(1, self.options.repeat)
                if backend in ("both", "qemu") and target.binary is not None:
                    for round_ in range(rounds):
                        try:
                            if workdir is None:
                                workdir = self.logs.item_workdir(scenario, target)
                            # --repeat: every run's logs in a folder of its own inside the item's.
                            run_dir = workdir if rounds == 1 else self.logs.round_workdir(workdir, round_)
                            real = await self.run_real(scenario, target, run_dir)
                            reals.append(real)
                            if real.accel in ("kvm", "tcg"):  # the model's host is what the run really used
                                accel = real.accel
                        except Exception as exc:
                            reals.append(exc)
                    outcomes["qemu"] = reals[0]
                if backend in ("both", "reference") or target.binary is None:
                    try:
                        outcomes["reference"] = await self.run_model(scenario, target, accel)
                    except Exception as exc:
                        outcomes["reference"] = exc
                if rounds > 1 and reals:
                    self.recorder.record_repeated(scenario, target, reals, outcomes.get("reference"), workdir)
                else:
                    self.recorder.record(scenario, target, outcomes, workdir)
                workdir = None
            finally:
                if workdir is not None:  # interrupted before the item was recorded: only "all" keeps it
                    self.logs.settle_logs(workdir, "not run")

    async def run(self) -> Results:
        semaphore = asyncio.Semaphore(max(1, self.options.jobs))
        provider = self.options.provider
        if provider is None and self.options.vfio_provider:
            provider = get_provider(self.options.vfio_provider, self.options.vfio_options)
        # The provider runs a batch of scenarios on every binary of the run (items of one version each only),
        # and the cross-version items as pairs of binaries when it can (harness.vfio_batch).
        unbatchable = {s.id for s, t in self.items if t.cross or t.missing is not None}
        vfio = [s for s in self.scenarios if needs_vfio(s) and s.id not in unbatchable] if provider is not None else []
        pairs = [(s, t) for s, t in self.items if t.cross and t.missing is None and needs_vfio(s)]
        pairs = pairs if provider is not None and runs_pairs(provider) else []
        paired = {(s.id, t.column) for s, t in pairs}
        tasks: list[asyncio.Task[None]] = []
        self.recorder.save()
        try:
            if (vfio or pairs) and provider is not None:
                tasks.append(asyncio.create_task(run_vfio_batch(self, vfio, provider, pairs)))
            # scenario-major order: with several binaries, the columns of one scenario finish together
            for scenario, target in self.items:
                if scenario not in vfio and (scenario.id, target.column) not in paired:
                    tasks.append(asyncio.create_task(self.run_item(scenario, target, semaphore)))
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            if procutil.interrupted() is None:
                raise  # cancelled by our caller, not by a signal: theirs to handle
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            for task in tasks:
                task.cancel()
            # Await them all, so that each one's cleanup (QEMUs, sockets, workdirs) has run and no exception
            # is left unretrieved when the loop closes.
            await asyncio.gather(*tasks, return_exceptions=True)
            signum = procutil.interrupted()
            self.results.meta["end"] = _now()
            self.results.meta["interrupted"] = bool(self.results.not_run) or signum is not None
            if signum is not None:
                self.results.meta["signal"] = signal.Signals(signum).name
            self.progress.finish()
            self.logs.remove_empty_logs_root()
            self.recorder.save()
        return self.results


def get_provider(name: str, options: Mapping[str, Any]) -> VfioProvider:
    import importlib

    try:
        module = importlib.import_module("harness.vfio.provider")
    except ImportError as exc:
        raise ProviderUnavailable(f"VFIO providers are not available in this installation: {exc}") from None
    try:
        provider: VfioProvider = module.get_provider(name, dict(options))
    except (KeyError, ValueError, VfioSetupError) as exc:
        # VfioSetupError: the host provider refusing unusable devices (HostDeviceRefused), before any QEMU.
        raise ProviderUnavailable(f"--vfio-provider {name}: {exc}") from None
    return provider


async def run(
    scenarios: Sequence[Scenario], targets: Sequence[Target], options: RunOptions, items: Sequence[Item] | None = None
) -> Results:
    """Raises harness.scenario_error.ScenarioError, before any QEMU starts, for a scenario --no-exec refuses.
    ``items``: harness.cross_targets.plan_items' (default: every scenario on every target)."""
    if options.no_exec:
        for scenario in scenarios:
            refuse_host_commands(scenario)
    return await _Run(scenarios, targets, options, items).run()


def run_sync(
    scenarios: Sequence[Scenario], targets: Sequence[Target], options: RunOptions, items: Sequence[Item] | None = None
) -> Results:
    """:func:`run` from synchronous code (the CLI, pytest).

    SIGINT/SIGTERM (harness.procutil's one policy): every QEMU is killed by the handler, the run's task is
    cancelled once (a second signal only kills again: cancelling the cleanup would leave folders behind), the
    items in flight are not recorded, and the results come back with ``meta.interrupted``/``meta.signal``;
    the caller picks the exit status from :func:`harness.procutil.interrupted`."""

    async def main() -> Results:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopping: list[int] = []

        def stop(signum: int) -> None:
            if stopping or task is None or task.done():
                return
            stopping.append(signum)
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake the selector if it sleeps in a long wait

        with procutil.on_interrupt(stop):
            return await run(scenarios, targets, options, items)

    return asyncio.run(main())


def progress_stream() -> TextIO:
    return sys.stderr
