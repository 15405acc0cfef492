"""Differential runner: every scenario on every target, real QEMU and the model side by side.

A target is a QEMU binary (the model then runs at that binary's version, with the host facts probed for
it) or, for ``--backend reference --profile X``, a model profile alone. Scenarios run concurrently
(``jobs``, an asyncio semaphore); each has its own VMs, sockets and ports (the executor's job), so the
only shared state is the results, which are rewritten atomically after every completed item.

VFIO scenarios need a host device. With a provider (``--vfio-provider``) they go to it as one batch
(the mtty lab boots a nested guest once for all of them); without one the executor, given no allocator,
skips the real side with its reason and the model still runs.

Each item's QEMUs log into a folder of their own under the logs root (``--logs-dir``), named after the
item, so that a path a QEMU error cites stays valid; after the item the folder is kept or removed as
``--keep-logs`` says (default: kept when the item diverged, erred, hit a known QEMU bug or an environment
error), and the kept folder's path goes into the outcome (``logs``) for the reports to link.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from harness import procutil
from harness.compare import Comparison, compare, skip_reason
from harness.errors import HostEnvironmentError
from harness.host_commands import refuse_host_commands
from harness.known_bugs import classify
from harness.results import Floor, HarnessError, Results, Skip, WorkItem, item_log_name, save, skip_kind
from harness.stability import Run, aggregate, representative
from reference_impl.host import HostFacts
from reference_impl.outcome import Outcome
from reference_impl.scenario import Scenario
from reference_impl.versions import Version

if TYPE_CHECKING:
    from harness.binaries import QemuBinary
    from harness.vfio.allocator import VfioDeviceAllocator

BACKENDS = ("both", "reference", "qemu")
KEEP_LOGS = ("all", "failed", "none")
# Statuses (see _Run.record) after which --keep-logs failed keeps an item's logs.
_FAILED_STATUSES = ("DIVERGE", "known QEMU bug", "error", "env error")

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


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first (what creating ``path`` creates)."""
    missing: list[Path] = []
    current = path.absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove each folder that is empty, deepest first; stop at the first that is not (it holds something)."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


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
        if options.keep_logs not in KEEP_LOGS:
            raise ValueError(f"unknown --keep-logs {options.keep_logs!r} (allowed: {', '.join(KEEP_LOGS)})")
        self.scenarios = list(scenarios)
        self.targets = list(targets)
        self.options = options
        self.results = Results(meta=self._meta())
        floor = Floor(options.require_all, options.min_compared)
        self.results.floor = floor if floor.active else None
        self.results.not_run = [WorkItem(s.id, t.column) for t in self.targets for s in self.scenarios]
        self.progress = Progress(options.progress, len(self.results.not_run))
        self._facts: dict[tuple[str, str], HostFacts] = {}
        self._facts_lock = asyncio.Lock()
        self._vfio_lock = asyncio.Lock()
        self._execute = options.execute
        self._predict = options.predict
        self._host_facts = options.host_facts
        self._logs_created = missing_folders(options.logs_dir) if options.logs_dir is not None else []

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

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _compare(self, scenario: Scenario, target: Target, reference: Outcome, qemu: Outcome) -> Comparison | None:
        """The comparison of one real run with the model, known bug applied; None when it is not compared."""
        if skip_reason(reference, qemu) is not None:
            return None
        comparison = compare(reference, qemu, column=target.column)
        classify(comparison, scenario, target.version, qemu.accel)
        return comparison

    def record_repeated(
        self,
        scenario: Scenario,
        target: Target,
        reals: Sequence[Outcome | BaseException],
        model: Outcome | BaseException | None,
        workdir: Path | None = None,
    ) -> None:
        """``--repeat``: every real run against the one prediction, aggregated into ``stability``; the item's
        outcome and comparison are those of :func:`harness.stability.representative` (a run that diverged
        if any did), recorded as a single run would be (``workdir``: the folder holding every run's logs)."""
        runs: list[Run] = []
        for real in reals:
            if isinstance(real, BaseException):
                text = "".join(traceback.format_exception_only(type(real), real)).strip()
                runs.append(Run(error=text or type(real).__name__))
                continue
            stamped = _stamp(real, target)
            comparison = self._compare(scenario, target, model, stamped) if isinstance(model, Outcome) else None
            runs.append(Run(outcome=stamped, comparison=comparison))
        if procutil.interrupted() is None:
            self.results.stability.append(aggregate(scenario.id, target.column, runs))
        chosen = representative(runs)
        qemu: Outcome | BaseException = reals[0]
        if chosen is not None and chosen.outcome is not None:
            qemu = chosen.outcome
        outcomes: dict[str, Outcome | BaseException] = {"qemu": qemu}
        if model is not None:  # None: --backend qemu, nothing to compare with
            outcomes["reference"] = model
        provider_logs = _provider_logs(qemu) if workdir is None and isinstance(qemu, Outcome) else None
        self.record(scenario, target, outcomes, workdir, provider_logs=provider_logs)

    def record(
        self,
        scenario: Scenario,
        target: Target,
        outcomes: Mapping[str, Outcome | BaseException],
        workdir: Path | None = None,
        provider_logs: Path | None = None,
    ) -> None:
        """One finished item. ``workdir``: its QEMU log folder (kept or removed here). ``provider_logs``: for an
        item a VFIO provider ran, the folder its logs came back in, if any (copied out when kept)."""
        item = WorkItem(scenario.id, target.column)
        if procutil.interrupted() is not None:
            # After SIGINT/SIGTERM every QEMU was killed by us: what an item in flight saw since (a VM that
            # "exited with status -9") is not QEMU's answer. The item stays in not_run.
            return
        status = "done"
        errors = {b: o for b, o in outcomes.items() if isinstance(o, BaseException)}
        good = {b: o for b, o in outcomes.items() if isinstance(o, Outcome)}
        for outcome in good.values():
            self.results.outcomes.append(_stamp(outcome, target))
        recorded: list[HarnessError] = []
        for backend, exc in errors.items():
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            kind = "environment" if isinstance(exc, HostEnvironmentError) else "harness"
            recorded.append(HarnessError(scenario.id, target.column, backend, text, kind=kind))
            label = "env error" if kind == "environment" else "error"
            status = f"{label} ({backend}: {text.splitlines()[-1] if text else type(exc).__name__})"
        if any(e.kind == "harness" for e in recorded) and status.startswith("env error"):
            status = "error" + status[len("env error") :]  # a harness failure is the one to look at first
        self.results.errors.extend(recorded)
        if not errors and "qemu" in good and "reference" in good:
            reason = skip_reason(good["reference"], good["qemu"])
            if reason is not None:
                skipped = good["qemu"] if good["qemu"].verdict == "skipped" else good["reference"]
                self.results.skips.append(Skip(scenario.id, target.column, reason, skip_kind(skipped)))
                status = f"skip ({reason})"
            else:
                comparison = self._compare(scenario, target, good["reference"], good["qemu"])
                assert comparison is not None  # skip_reason was None
                self.results.comparisons.append(comparison)
                status = "agree" if comparison.agree else ("known QEMU bug" if comparison.known_bug else "DIVERGE")
                if comparison.known_bug_gone:
                    status = "agree (known bug no longer reproduces)"
        elif not errors:
            (outcome,) = good.values()
            if outcome.verdict == "skipped":
                self.results.skips.append(
                    Skip(scenario.id, target.column, outcome.skip_reason or "skipped", skip_kind(outcome))
                )
                status = f"skip ({outcome.skip_reason})"
            else:
                status = outcome.verdict
        kept: str | None = None
        if workdir is not None:
            kept = self.settle_logs(workdir, status)
        elif "qemu" in outcomes and self.keeps(status):
            kept = self.copy_provider_logs(provider_logs, scenario, target, good.get("qemu"))
        if kept is not None:
            for outcome in good.values():
                if outcome.backend == "qemu":
                    outcome.logs = kept
            for error in recorded:
                if error.backend == "qemu":
                    error.logs = kept
        if item in self.results.not_run:
            self.results.not_run.remove(item)
        self.progress.update(item, status)
        self.save()

    def save(self) -> None:
        """Rewrite the results file; a host that cannot take it (full disk) ends the run as an environment
        error: running on for hours without a record of what ran helps nobody."""
        if self.options.json_path is None:
            return
        try:
            save(self.results, self.options.json_path)
        except OSError as exc:
            raise HostEnvironmentError(f"cannot write {self.options.json_path}", exc.strerror or str(exc)) from exc

    def keeps(self, status: str) -> bool:
        """Whether ``--keep-logs`` keeps the logs of an item that ended with ``status``."""
        return self.options.logs_dir is not None and (
            self.options.keep_logs == "all"
            or (self.options.keep_logs == "failed" and status.startswith(_FAILED_STATUSES))
        )

    def copy_provider_logs(
        self, source: Path | None, scenario: Scenario, target: Target, outcome: Outcome | None
    ) -> str | None:
        """Copy the logs a VFIO provider brought back (the mtty lab: through its writable 9p share) into the
        logs root; without any, say so in the outcome (``extra.logs_not_kept``) rather than link nothing."""
        assert self.options.logs_dir is not None
        if source is None or not source.is_dir():
            if outcome is not None and outcome.verdict != "skipped":
                outcome.extra["logs_not_kept"] = (
                    f"the VFIO provider {outcome.vfio_provider or self.options.vfio_provider!r} ran this item's "
                    "QEMUs itself and returned no logs"
                )
            return None
        destination = self.options.logs_dir / item_log_name(scenario.id, target.column)
        try:
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(source, destination)
        except OSError as exc:
            if outcome is not None:
                outcome.extra["logs_not_kept"] = f"copying {source} failed: {exc}"
            return None
        return str(destination.resolve())

    def settle_logs(self, workdir: Path, status: str) -> str | None:
        """Keep or remove an item's log folder (``--keep-logs``); the kept folder's absolute path, or None.

        A folder the executor never wrote into (a skip decided before any QEMU started) is not worth a link."""
        keep = self.keeps(status)
        if keep and workdir.is_dir() and any(workdir.iterdir()):
            return str(workdir.resolve())
        shutil.rmtree(workdir, ignore_errors=True)
        return None

    def item_workdir(self, scenario: Scenario, target: Target) -> Path:
        """A fresh folder for the item's QEMU logs: under the logs root (a previous run's folder of the same
        item is replaced, so its logs never mix with this run's), else a temporary one."""
        if self.options.logs_dir is None:
            return Path(tempfile.mkdtemp(prefix="mc-"))
        workdir = self.options.logs_dir / item_log_name(scenario.id, target.column)
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            workdir.mkdir(parents=True)
        except OSError as exc:  # a full or read-only disk: the host's failure, not this item's
            raise HostEnvironmentError("the item's log folder", f"{workdir}: {exc.strerror or exc}") from exc
        return workdir

    @staticmethod
    def round_workdir(workdir: Path, round_: int) -> Path:
        """``--repeat``: the log folder of run ``round_`` (from 0) inside the item's folder."""
        run_dir = workdir / f"run-{round_ + 1}"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostEnvironmentError("the item's log folder", f"{run_dir}: {exc.strerror or exc}") from exc
        return run_dir

    # ---- one item -------------------------------------------------------------------------------------
    async def run_real(self, scenario: Scenario, target: Target, workdir: Path) -> Outcome:
        assert target.binary is not None
        allocator = self.options.allocator if needs_vfio(scenario) else None
        execute = self.execute_fn()
        # The executor bounds every wait itself; this outer bound only catches a hung executor.
        coro = execute(scenario, target.binary, workdir=workdir, allocator=allocator, timeout=self.options.timeout)
        bound = self.options.timeout * 3 + 30
        if allocator is None:
            return await asyncio.wait_for(coro, timeout=bound)
        # Host devices are few (often one per side): VFIO scenarios take turns.
        async with self._vfio_lock:
            return await asyncio.wait_for(coro, timeout=bound)

    async def run_model(self, scenario: Scenario, target: Target, accel: str) -> Outcome:
        host = await self.facts(target, accel)
        return _with_kernel(self.predict_fn()(scenario, target.version, host), host)

    async def run_item(self, scenario: Scenario, target: Target, semaphore: asyncio.Semaphore) -> None:
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
                                workdir = self.item_workdir(scenario, target)
                            # --repeat: every run's logs in a folder of its own inside the item's.
                            run_dir = workdir if rounds == 1 else self.round_workdir(workdir, round_)
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
                    self.record_repeated(scenario, target, reals, outcomes.get("reference"), workdir)
                else:
                    self.record(scenario, target, outcomes, workdir)
                workdir = None
            finally:
                if workdir is not None:  # interrupted before the item was recorded: only "all" keeps it
                    self.settle_logs(workdir, "not run")

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
                    # The provider's own error for an item (e.g. ResourceUnavailable raised in the lab).
                    item_errors = getattr(provider, "item_errors", None) or {}
                    binary_path = str(target.binary.path)
                    for round_ in range(rounds):
                        got = real[round_].get((scenario.id, target.column))
                        reals.append(
                            got
                            or batch_errors[round_]
                            or item_errors.get((scenario.id, binary_path))
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
                    qemu = outcomes.get("qemu")
                    logs = _provider_logs(qemu) if isinstance(qemu, Outcome) else None
                    self.record(scenario, target, outcomes, provider_logs=logs)

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
            self._remove_empty_logs_root()
            self.save()
        return self.results

    def _remove_empty_logs_root(self) -> None:
        """A run that kept nothing leaves no empty logs folder behind (only folders this run created)."""
        remove_empty(self._logs_created)


def _with_kernel(outcome: Outcome, host: HostFacts) -> Outcome:
    """The model's outcome names the kernel whose facts it was given (the lab guest's, for VFIO)."""
    if outcome.kernel is None:
        outcome.kernel = host.kernel
    return outcome


def _provider_logs(outcome: Outcome) -> Path | None:
    """Where the mtty lab left an item's QEMU logs: ``extra.lab_logs`` inside its run folder ``extra.lab_run``
    (harness.vfio_lab.inside writes them into the writable share). The keys are the lab's; they are
    removed from the outcome, whose ``logs`` names the kept copy instead."""
    run, logs = outcome.extra.get("lab_run"), outcome.extra.pop("lab_logs", None)
    return Path(str(run)) / str(logs) if run and logs else None


def _target_of(outcome: Outcome, targets: Sequence[Target]) -> Target | None:
    for target in targets:
        if target.binary is not None and outcome.binary and str(target.binary.path) == outcome.binary:
            return target
    for target in targets:
        if str(target.version) == outcome.qemu_version:
            return target
    return None


class _AnyDevice:
    """Stands in for a VFIO allocator when asking what the HOST lacks: VFIO is a resource, not a host
    capability, so a missing provider must not lower the floor."""

    name = "any"


def host_capable_items(scenarios: Sequence[Scenario], targets: Sequence[Target]) -> tuple[int, list[str]]:
    """For ``--min-compared auto``: how many items this host can compare (every item but those whose
    declared ``requires`` capabilities (kvm, uffd, uffd-wp) or explicit accelerator it lacks, by the same
    checks the executor skips with), and why each other item cannot. Resources (a VFIO provider, a guest
    image) never lower the count: a run without them shrank. VFIO scenarios are judged against this host's
    probe too (the suite's declare no capability but ``vfio``)."""
    from harness.executor import unmet_requirement
    from harness.probe import choose_accel, probe_binary, probe_host

    host = probe_host()
    capable = 0
    lacking: list[str] = []
    for target in targets:
        if target.binary is None:
            continue  # a model profile alone compares nothing
        probe = probe_binary(target.binary)
        for scenario in scenarios:
            why = unmet_requirement(scenario, probe, host, _AnyDevice())  # type: ignore[arg-type]
            for spec in (scenario.source, scenario.destination):
                requested = "kvm" if spec.accel == "auto" and "kvm" in scenario.requires else spec.accel
                if why is None and requested == "kvm":
                    accel, reason = choose_accel(requested, probe, host)
                    why = None if accel is not None else reason
            if why is None:
                capable += 1
            else:
                lacking.append(f"{scenario.id} [{target.column}]: {why}")
    return capable, lacking


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
    """Raises harness.scenario_error.ScenarioError, before any QEMU starts, for a scenario --no-exec refuses."""
    if options.no_exec:
        for scenario in scenarios:
            refuse_host_commands(scenario)
    return await _Run(scenarios, targets, options).run()


def run_sync(scenarios: Sequence[Scenario], targets: Sequence[Target], options: RunOptions) -> Results:
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
            return await run(scenarios, targets, options)

    return asyncio.run(main())


def progress_stream() -> TextIO:
    return sys.stderr
