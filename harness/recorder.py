"""Each finished item into the results: its outcomes, the comparison (known QEMU bugs applied), skips and
harness errors, ``--repeat``'s stability, and the results file rewritten atomically after every item.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contract.outcome import Outcome
from contract.scenario import Scenario
from harness import procutil
from harness.compare import Comparison, compare, skip_reason
from harness.errors import HostEnvironmentError
from harness.item_logs import ItemLogs, provider_log_folder
from harness.known_bugs import classify
from harness.progress import Progress
from harness.results import ErrorRecord, Results, Skip, WorkItem, save, skip_kind
from harness.stability import Run, aggregate, representative

if TYPE_CHECKING:
    from harness.targets import Target


def _stamp(outcome: Outcome, target: Target) -> Outcome:
    """Put an outcome in its column; the model's profile stays visible in ``extra``."""
    if outcome.backend == "reference" and outcome.qemu_version != str(target.version):
        outcome.extra.setdefault("profile", outcome.qemu_version)
    outcome.qemu_version = str(target.version)
    if target.destination_version is not None:
        outcome.destination_qemu_version = str(target.destination_version)
    if target.column != outcome.qemu_version:
        outcome.extra["column"] = target.column
    return outcome


class ItemRecorder:
    """Where the run's items end: one :class:`Results`, its progress line and its items' log folders."""

    def __init__(self, results: Results, json_path: Path | None, progress: Progress, logs: ItemLogs) -> None:
        """``json_path``: where the results are saved after every item (``--json``), None for nowhere."""
        self.results = results
        self.json_path = json_path
        self.progress = progress
        self.logs = logs

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
        provider_logs = provider_log_folder(qemu) if workdir is None and isinstance(qemu, Outcome) else None
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
        recorded: list[ErrorRecord] = []
        for backend, exc in errors.items():
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            kind = "environment" if isinstance(exc, HostEnvironmentError) else "harness"
            recorded.append(ErrorRecord(scenario.id, target.column, backend, text, kind=kind))
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
            kept = self.logs.settle_logs(workdir, status)
        elif "qemu" in outcomes and self.logs.keeps(status):
            kept = self.logs.copy_provider_logs(provider_logs, scenario, target, good.get("qemu"))
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
        if self.json_path is None:
            return
        try:
            save(self.results, self.json_path)
        except OSError as exc:
            raise HostEnvironmentError(f"cannot write {self.json_path}", exc.strerror or str(exc)) from exc
