"""Differential runner: every scenario on every target, real QEMU and the model side by side.

A target is a QEMU binary (the model then runs at that binary's version, with the host facts probed for
it) or, for ``--backend reference --profile X``, a model profile alone. Scenarios run concurrently
(``jobs``, an asyncio semaphore); each has its own VMs, sockets and ports (the executor's job), so the
only shared state is the results, which are rewritten atomically after every completed item.

VFIO scenarios need a host device. With a provider (``--vfio-provider``) they go to it as one batch
(the mtty lab boots a nested guest once for all of them); without one the executor, given no allocator,
skips the real side with its reason and the model still runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from harness.compare import Comparison, compare, skip_reason
from harness.known_bugs import known_divergence
from harness.results import HarnessError, Results, Skip, WorkItem, save
from harness.stability import Run, aggregate, representative
from reference_impl.host import HostFacts
from reference_impl.outcome import Outcome
from reference_impl.scenario import Scenario
from reference_impl.versions import Version

if TYPE_CHECKING:
    from harness.binaries import QemuBinary
    from harness.vfio.allocator import VfioDeviceAllocator

BACKENDS = ("both", "reference", "qemu")

ExecuteFn = Callable[..., Awaitable[Outcome]]
PredictFn = Callable[[Scenario, Version, HostFacts], Outcome]
HostFactsFn = Callable[["QemuBinary", str], HostFacts]


class ProviderUnavailable(Exception):
    """The named VFIO provider cannot be used here (not installed, unknown name, bad options)."""


class VfioProvider(Protocol):
    """What harness.vfio.provider.get_provider returns (the VFIO lab, or a real device)."""

    async def run_batch(self, scenarios: Sequence[Scenario], binaries: Sequence[QemuBinary]) -> list[Outcome]: ...

    def host_facts(self) -> HostFacts: ...


@dataclass(frozen=True)
class Target:
    """A column of the results: a binary (model at its version) or a model profile without a binary."""

    column: str
    version: Version
    binary: QemuBinary | None = None


def targets_for_binaries(binaries: Sequence[QemuBinary]) -> list[Target]:
    """One target per binary; the column is the version, plus the label when two binaries share it."""
    counts: dict[str, int] = {}
    for b in binaries:
        counts[str(b.version)] = counts.get(str(b.version), 0) + 1
    targets = []
    for b in binaries:
        column = str(b.version)
        if counts[column] > 1:
            column = f"{column} ({b.path})"
        targets.append(Target(column=column, version=b.version, binary=b))
    return targets


def target_for_profile(profile: str) -> Target:
    version = Version.parse(profile)
    return Target(column=profile, version=version)


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1-based): raises ValueError with a message a user can act on."""
    try:
        k_text, n_text = text.split("/", 1)
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard expects K/N, e.g. 1/4, not {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard_of(scenario_id: str, n: int) -> int:
    """The 1-based shard a scenario belongs to: a hash of its id, so it never moves when others are added."""
    digest = hashlib.sha256(scenario_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(scenarios: Sequence[Scenario], k: int, n: int) -> list[Scenario]:
    return [s for s in scenarios if shard_of(s.id, n) == k]


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
    timeout: float = 60.0
    vfio_provider: str | None = None
    vfio_options: dict[str, Any] = field(default_factory=dict)
    progress: TextIO | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # injectable backends (unit tests of the runner's bookkeeping use fakes)
    execute: ExecuteFn | None = None
    predict: PredictFn | None = None
    host_facts: HostFactsFn | None = None
    provider: VfioProvider | None = None
    # Real host devices (--vfio-device): the executor asks this allocator for each launch's devices.
    allocator: VfioDeviceAllocator | None = None
    # --repeat N: the real side of every item runs N times (the model once); Results.stability says how
    # many runs agreed and which distinct outcomes were seen.
    repeat: int = 1


class Progress:
    """One live line on a terminal (rewritten in place), plain lines otherwise (CI logs)."""

    def __init__(self, stream: TextIO | None, total: int):
        self.stream = stream
        self.total = total
        self.done = 0
        self.counts: dict[str, int] = {}
        self.tty = bool(stream is not None and stream.isatty())
        self.started = time.monotonic()

    def update(self, item: WorkItem, status: str) -> None:
        self.done += 1
        kind = status.split("(", 1)[0].strip()
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.stream is None:
            return
        tally = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        elapsed = time.monotonic() - self.started
        line = f"[{self.done}/{self.total} {elapsed:.0f}s] {tally} | {item.scenario}[{item.column}] {status}"
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r\x1b[K" + line[: width - 1])
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None and self.tty and self.done != self.total:
            self.stream.write("\n")
            self.stream.flush()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _stamp(outcome: Outcome, target: Target) -> Outcome:
    """Put an outcome in its column; the model's profile stays visible in ``extra``."""
    if outcome.backend == "reference" and outcome.qemu_version != str(target.version):
        outcome.extra.setdefault("profile", outcome.qemu_version)
    outcome.qemu_version = str(target.version)
    if target.column != outcome.qemu_version:
        outcome.extra["column"] = target.column
    return outcome


class _Run:
    def __init__(self, scenarios: Sequence[Scenario], targets: Sequence[Target], options: RunOptions):
        if options.backend not in BACKENDS:
            raise ValueError(f"unknown backend {options.backend!r} (allowed: {', '.join(BACKENDS)})")
        self.scenarios = list(scenarios)
        self.targets = list(targets)
        self.options = options
        self.results = Results(meta=self._meta())
        self.results.not_run = [WorkItem(s.id, t.column) for t in self.targets for s in self.scenarios]
        self.progress = Progress(options.progress, len(self.results.not_run))
        self._facts: dict[tuple[str, str], HostFacts] = {}
        self._facts_lock = asyncio.Lock()
        self._vfio_lock = asyncio.Lock()
        self._execute = options.execute
        self._predict = options.predict
        self._host_facts = options.host_facts

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "backend": self.options.backend,
            "binaries": [
                {"path": str(t.binary.path), "version": str(t.version), "label": t.binary.label, "column": t.column}
                for t in self.targets
                if t.binary is not None
            ],
            "versions": [t.column for t in self.targets],
            "host": platform.node(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "jobs": self.options.jobs,
            "scenarios": len(self.scenarios),
            "descriptions": {s.id: s.description for s in self.scenarios if s.description},
            "start": _now(),
        }
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

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _compare(self, scenario: Scenario, target: Target, reference: Outcome, qemu: Outcome) -> Comparison | None:
        """The comparison of one real run with the model, known bug applied; None when it is not compared."""
        if skip_reason(reference, qemu) is not None:
            return None
        comparison = compare(reference, qemu, column=target.column)
        known = known_divergence(scenario.id, target.version)
        if known is not None and not comparison.agree and not known.problems(comparison):
            comparison.known_bug = known.reason
        return comparison

    def record_repeated(
        self,
        scenario: Scenario,
        target: Target,
        reals: Sequence[Outcome | BaseException],
        model: Outcome | BaseException | None,
    ) -> None:
        """``--repeat``: every real run against the one prediction, aggregated into ``stability``; the item's
        outcome and comparison are those of :func:`harness.stability.representative` (a run that diverged
        if any did), recorded as a single run would be."""
        runs: list[Run] = []
        for real in reals:
            if isinstance(real, BaseException):
                text = "".join(traceback.format_exception_only(type(real), real)).strip()
                runs.append(Run(error=text or type(real).__name__))
                continue
            stamped = _stamp(real, target)
            comparison = self._compare(scenario, target, model, stamped) if isinstance(model, Outcome) else None
            runs.append(Run(outcome=stamped, comparison=comparison))
        self.results.stability.append(aggregate(scenario.id, target.column, runs))
        chosen = representative(runs)
        outcomes: dict[str, Outcome | BaseException] = {
            "qemu": chosen.outcome if chosen is not None and chosen.outcome is not None else reals[0]
        }
        if model is not None:  # None: --backend qemu, nothing to compare with
            outcomes["reference"] = model
        self.record(scenario, target, outcomes)

    def record(self, scenario: Scenario, target: Target, outcomes: Mapping[str, Outcome | BaseException]) -> None:
        item = WorkItem(scenario.id, target.column)
        status = "done"
        errors = {b: o for b, o in outcomes.items() if isinstance(o, BaseException)}
        good = {b: o for b, o in outcomes.items() if isinstance(o, Outcome)}
        for outcome in good.values():
            self.results.outcomes.append(_stamp(outcome, target))
        for backend, exc in errors.items():
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.results.errors.append(HarnessError(scenario.id, target.column, backend, text))
            status = f"error ({backend}: {text.splitlines()[-1] if text else type(exc).__name__})"
        if not errors and "qemu" in good and "reference" in good:
            reason = skip_reason(good["reference"], good["qemu"])
            if reason is not None:
                self.results.skips.append(Skip(scenario.id, target.column, reason))
                status = f"skip ({reason})"
            else:
                comparison = self._compare(scenario, target, good["reference"], good["qemu"])
                assert comparison is not None  # skip_reason was None
                self.results.comparisons.append(comparison)
                status = "agree" if comparison.agree else ("known QEMU bug" if comparison.known_bug else "DIVERGE")
        elif not errors:
            (outcome,) = good.values()
            if outcome.verdict == "skipped":
                self.results.skips.append(Skip(scenario.id, target.column, outcome.skip_reason or "skipped"))
                status = f"skip ({outcome.skip_reason})"
            else:
                status = outcome.verdict
        if item in self.results.not_run:
            self.results.not_run.remove(item)
        self.progress.update(item, status)
        self.save()

    def save(self) -> None:
        if self.options.json_path is not None:
            save(self.results, self.options.json_path)

    # ---- one item -------------------------------------------------------------------------------------
    async def run_real(self, scenario: Scenario, target: Target) -> Outcome:
        assert target.binary is not None
        allocator = self.options.allocator if needs_vfio(scenario) else None
        workdir = Path(tempfile.mkdtemp(prefix="mc-"))
        try:
            execute = self.execute_fn()
            # The executor bounds every wait itself; this outer bound only catches a hung executor.
            coro = execute(scenario, target.binary, workdir=workdir, allocator=allocator, timeout=self.options.timeout)
            bound = self.options.timeout * 3 + 30
            if allocator is None:
                return await asyncio.wait_for(coro, timeout=bound)
            # Host devices are few (often one per side): VFIO scenarios take turns.
            async with self._vfio_lock:
                return await asyncio.wait_for(coro, timeout=bound)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    async def run_model(self, scenario: Scenario, target: Target, accel: str) -> Outcome:
        host = await self.facts(target, accel)
        return _with_kernel(self.predict_fn()(scenario, target.version, host), host)

    async def run_item(self, scenario: Scenario, target: Target, semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            outcomes: dict[str, Outcome | BaseException] = {}
            backend = self.options.backend
            accel = scenario.source.accel
            reals: list[Outcome | BaseException] = []
            if backend in ("both", "qemu") and target.binary is not None:
                for _ in range(max(1, self.options.repeat)):
                    try:
                        real = await self.run_real(scenario, target)
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
            if self.options.repeat > 1 and reals:
                self.record_repeated(scenario, target, reals, outcomes.get("reference"))
            else:
                self.record(scenario, target, outcomes)

    async def run_vfio_batch(self, scenarios: Sequence[Scenario], provider: VfioProvider) -> None:
        """Hand every VFIO scenario to the provider at once (``--repeat N``: N batches), then run the model
        with the provider's host."""
        binary_targets = [t for t in self.targets if t.binary is not None]
        binaries = [t.binary for t in binary_targets if t.binary is not None]
        rounds = max(1, self.options.repeat)
        real: list[dict[tuple[str, str], Outcome]] = [{} for _ in range(rounds)]
        batch_errors: list[BaseException | None] = [None] * rounds
        if self.options.backend in ("both", "qemu") and binaries:
            for round_ in range(rounds):
                try:
                    for outcome in await provider.run_batch(scenarios, binaries):
                        target = _target_of(outcome, binary_targets)
                        if target is not None:
                            real[round_][(outcome.scenario, target.column)] = outcome
                except Exception as exc:
                    batch_errors[round_] = exc
        host = provider.host_facts()
        for target in self.targets:
            for scenario in scenarios:
                outcomes: dict[str, Outcome | BaseException] = {}
                reals: list[Outcome | BaseException] = []
                if self.options.backend in ("both", "qemu") and target.binary is not None:
                    for round_ in range(rounds):
                        got = real[round_].get((scenario.id, target.column))
                        reals.append(
                            got
                            or batch_errors[round_]
                            or RuntimeError(
                                f"VFIO provider {self.options.vfio_provider!r} returned no outcome for this scenario"
                            )
                        )
                    outcomes["qemu"] = reals[0]
                if self.options.backend in ("both", "reference") or target.binary is None:
                    try:
                        outcomes["reference"] = _with_kernel(self.predict_fn()(scenario, target.version, host), host)
                    except Exception as exc:
                        outcomes["reference"] = exc
                if rounds > 1 and reals:
                    self.record_repeated(scenario, target, reals, outcomes.get("reference"))
                else:
                    self.record(scenario, target, outcomes)

    async def run(self) -> Results:
        semaphore = asyncio.Semaphore(max(1, self.options.jobs))
        provider = self.options.provider
        if provider is None and self.options.vfio_provider:
            provider = get_provider(self.options.vfio_provider, self.options.vfio_options)
        vfio = [s for s in self.scenarios if needs_vfio(s)] if provider is not None else []
        plain = [s for s in self.scenarios if s not in vfio]
        tasks: list[asyncio.Task[None]] = []
        self.save()
        try:
            if vfio and provider is not None:
                tasks.append(asyncio.create_task(self.run_vfio_batch(vfio, provider)))
            # scenario-major order: with several binaries, the columns of one scenario finish together
            for scenario in plain:
                for target in self.targets:
                    tasks.append(asyncio.create_task(self.run_item(scenario, target, semaphore)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.results.meta["end"] = _now()
            self.results.meta["interrupted"] = bool(self.results.not_run)
            self.progress.finish()
            self.save()
        return self.results


def _with_kernel(outcome: Outcome, host: HostFacts) -> Outcome:
    """The model's outcome names the kernel whose facts it was given (the lab guest's, for VFIO)."""
    if outcome.kernel is None:
        outcome.kernel = host.kernel
    return outcome


def _target_of(outcome: Outcome, targets: Sequence[Target]) -> Target | None:
    for target in targets:
        if target.binary is not None and outcome.binary and str(target.binary.path) == outcome.binary:
            return target
    for target in targets:
        if str(target.version) == outcome.qemu_version:
            return target
    return None


def get_provider(name: str, options: Mapping[str, Any]) -> VfioProvider:
    import importlib

    try:
        module = importlib.import_module("harness.vfio.provider")
    except ImportError as exc:
        raise ProviderUnavailable(f"VFIO providers are not available in this installation: {exc}") from None
    try:
        provider: VfioProvider = module.get_provider(name, dict(options))
    except (KeyError, ValueError, RuntimeError) as exc:
        # RuntimeError: the host provider refusing unusable devices (HostDeviceRefused), before any QEMU.
        raise ProviderUnavailable(f"--vfio-provider {name}: {exc}") from None
    return provider


async def run(scenarios: Sequence[Scenario], targets: Sequence[Target], options: RunOptions) -> Results:
    return await _Run(scenarios, targets, options).run()


def run_sync(scenarios: Sequence[Scenario], targets: Sequence[Target], options: RunOptions) -> Results:
    """:func:`run` from synchronous code (the CLI, pytest); Ctrl-C keeps the results written so far."""
    return asyncio.run(run(scenarios, targets, options))


def progress_stream() -> TextIO:
    return sys.stderr
