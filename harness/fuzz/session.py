"""One fuzz worker on one binary: hypothesis rounds until the budget is spent, the counts, and the findings.

A round is one ``run_state_machine_as_test`` with its own seed (``--seed N``: rounds N*1000, N*1000+1, ...). The
first new divergence of a round (by :attr:`~harness.fuzz.lockstep.Check.signature`) becomes its target: hypothesis
shrinks it (for :data:`HYPOTHESIS_SHRINK_S` at most), a step-deletion pass finishes, and the round ends. Another new
divergence met meanwhile ends its sequence and is left to a later round; a divergence found by an earlier round is
counted as a repeat and the sequence goes on, so that a budget finds several gaps, and what lies past a known one,
rather than one gap many times. The smallest sequence of each signature is kept, after one fresh re-run that must
diverge the same way (a timing race is counted as ``unstable``, not reported). The example database
(DirectoryBasedExampleDatabase) replays earlier runs' failures first.

The budget bounds wall time: new sequences are searched in its first :data:`SEARCH_SHARE`, the rest is for
shrinking, and no run starts after it. A step that would raises :class:`~harness.fuzz.lockstep.StopFuzzing` (a
BaseException, which hypothesis lets through), and the smallest sequence confirmed so far is what gets written.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hypothesis import HealthCheck, Phase, Verbosity, seed, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test

from contract.scenario import Step
from harness.errors import MigconformError
from harness.fuzz.lockstep import Check, LockstepRunner, StopFuzzing
from harness.fuzz.machine import machine_class
from harness.fuzz.toml_out import outcome_line, scenario_text, write_found
from harness.fuzz.vocabulary import MAX_STEPS, Vocabulary

# The share of the budget in which new sequences are searched; the rest is kept for shrinking what was found.
SEARCH_SHARE = 0.8
# How long hypothesis' own shrinker may work on a round's divergence: its passes re-draw whole sequences, which at
# a fraction of a second per step is slow; :meth:`FuzzSession.delete_steps` finishes the job.
HYPOTHESIS_SHRINK_S = 45.0
ROUND_SEED_STRIDE = 1000


class Divergence(MigconformError):
    """A prefix diverged from the model: hypothesis shrinks the sequence."""


@dataclass
class Finding:
    """The smallest sequence seen for one divergence signature, with the run that showed it."""

    signature: str
    steps: list[Step]
    check: Check
    seed: int
    path: Path | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (len(self.steps), len(repr(self.steps)))


@dataclass
class Counts:
    sequences: int = 0
    agree: int = 0
    known_bug: int = 0
    not_modelled: int = 0
    skipped: int = 0
    errors: int = 0
    repeats: int = 0
    deferred: int = 0
    unstable: int = 0
    racing: int = 0
    rounds: int = 0
    # Each unstable sequence: its steps and how the fresh re-run differed (what raced).
    unstable_details: list[dict[str, Any]] = field(default_factory=list)
    not_modelled_reasons: dict[str, int] = field(default_factory=dict)
    error_details: list[str] = field(default_factory=list)


class FuzzSession:
    """Fuzzing of one target by one worker; :meth:`run` until the budget is spent."""

    def __init__(
        self,
        runner: LockstepRunner,
        vocab: Vocabulary,
        *,
        budget_s: float,
        seed: int,
        found_dir: Path,
        db_dir: Path | None,
        max_examples: int = 1_000_000,
        progress: TextIO | None = None,
    ) -> None:
        self.runner = runner
        self.vocab = vocab
        self.budget_s = budget_s
        self.seed = seed
        self.found_dir = found_dir
        self.db_dir = db_dir
        self.max_examples = max_examples
        self.progress = progress
        self.counts = Counts()
        self.findings: dict[str, Finding] = {}
        self.round_seeds: list[int] = []
        self._suppressed: set[str] = set()
        # The signature this round shrinks (the first new one it found), None before.
        self._target: str | None = None
        self._shrink_until = 0.0
        self._round_seed = seed
        self.started = 0.0
        self.deadline = 0.0
        self.search_deadline = 0.0
        self.seconds = 0.0

    # ---- the machine's sink ---------------------------------------------------------------------------
    def on_prefix(self, steps: list[Step]) -> bool | str:
        now = time.monotonic()
        if now >= self.deadline or (self._target is None and now >= self.search_deadline):
            raise StopFuzzing("budget")
        if self._target is not None and now >= self._shrink_until:
            raise StopFuzzing("shrink")
        check = self.runner.check(steps)
        if check.kind == "agree":
            self.counts.agree += 1
            return False
        if check.kind == "known-bug":
            self.counts.known_bug += 1
            return False
        if check.kind == "racing":
            # Only a wait may follow (harness.fuzz.machine): any other step meets the same race.
            self.counts.racing += 1
            return "wait"
        if check.kind == "not-modelled":
            self.counts.not_modelled += 1
            reasons = self.counts.not_modelled_reasons
            reasons[check.detail] = reasons.get(check.detail, 0) + 1
            return True
        if check.kind in ("skip", "error"):
            self.counts.skipped += check.kind == "skip"
            self.counts.errors += check.kind == "error"
            if check.kind == "error" and len(self.counts.error_details) < 20:
                self.counts.error_details.append(f"{check.detail} [{len(steps)} steps]")
            return True
        signature = check.signature
        if signature in self._suppressed:
            # Found in an earlier round: the sequence goes on, so what lies past a known gap is explored too.
            self.counts.repeats += 1
            return False
        if self._target is not None and signature != self._target:
            # A new divergence while this round shrinks another: left for a later round, which shrinks it.
            self.counts.deferred += 1
            return True
        if not self._record(signature, steps, check):
            return True
        if self._target is None:
            self._target = signature
            self._shrink_until = now + HYPOTHESIS_SHRINK_S
        raise Divergence(signature)

    def _record(self, signature: str, steps: list[Step], check: Check) -> bool:
        """Keep ``steps`` if it is the smallest sequence of ``signature`` so far and a fresh re-run diverges the
        same way; False when that re-run did not (a race: counted as unstable)."""
        best = self.findings.get(signature)
        if best is not None and (len(steps), len(repr(steps))) >= best.key:
            return True
        confirm = self.runner.check(steps, fresh=True)
        if confirm.kind != "diverge" or confirm.signature != signature:
            self.counts.unstable += 1
            if len(self.counts.unstable_details) < 50:
                self.counts.unstable_details.append(
                    {
                        "steps": [repr(step) for step in steps],
                        "first": signature,
                        "rerun": confirm.signature or confirm.kind,
                        "qemu": outcome_line(check.qemu) if check.qemu else None,
                        "qemu_rerun": outcome_line(confirm.qemu) if confirm.qemu else None,
                    }
                )
            return False
        self.findings[signature] = Finding(signature, list(steps), check, self._round_seed)
        return True

    def delete_steps(self, signature: str) -> None:
        """After hypothesis: drop one step at a time while the rest still diverges the same way (each candidate
        compared in lockstep, prefix by prefix, so its first divergence is the one that counts)."""
        improved = True
        while improved and time.monotonic() < self.deadline:
            improved = False
            steps = self.findings[signature].steps
            for index in range(len(steps)):
                candidate = steps[:index] + steps[index + 1 :]
                if not candidate:
                    continue
                check = Check("agree", 0.0)
                end = 0
                for end in range(1, len(candidate) + 1):
                    check = self.runner.check(candidate[:end])
                    # As in the search: a divergence an earlier round found does not end the sequence.
                    known = check.kind == "diverge" and check.signature in self._suppressed
                    if check.kind not in ("agree", "known-bug", "racing") and not known:
                        break
                if check.kind == "diverge" and check.signature == signature:
                    before = self.findings[signature].key
                    if self._record(signature, candidate[:end], check) and self.findings[signature].key < before:
                        improved = True
                        break

    def on_sequence_end(self, steps: list[Step]) -> None:
        if steps:
            self.counts.sequences += 1

    # ---- rounds ---------------------------------------------------------------------------------------
    def _settings(self) -> settings:
        database = DirectoryBasedExampleDatabase(str(self.db_dir)) if self.db_dir is not None else None
        return settings(
            max_examples=self.max_examples,
            stateful_step_count=MAX_STEPS,
            deadline=None,
            database=database,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
            report_multiple_bugs=False,
            print_blob=False,
            verbosity=Verbosity.quiet,
        )

    def run_round(self, round_seed: int) -> bool:
        """One hypothesis run; False when the budget is spent (or the run was interrupted)."""
        self._round_seed = round_seed
        self._target = None
        self.round_seeds.append(round_seed)
        self.counts.rounds += 1
        machine = seed(round_seed)(machine_class(self.vocab, self))
        spent = False
        try:
            try:
                run_state_machine_as_test(machine, settings=self._settings())
            except StopFuzzing as stop:
                if stop.reason != "shrink":
                    spent = True
            except (Divergence, Flaky):
                # Flaky: the shrunk example did not diverge again when hypothesis replayed it; what was confirmed
                # (Finding) stays.
                pass
            if self._target is not None and not spent:
                self.delete_steps(self._target)
        finally:
            self._suppressed |= set(self.findings)
            # Written after every round, so that a long run's findings can be triaged while it goes on.
            self.write_findings()
            if self.progress is not None:
                c = self.counts
                self.progress.write(
                    f"fuzz {self.runner.target.column} round seed {round_seed}: {c.sequences} sequences, "
                    f"{self.runner.runs} steps, {len(self.findings)} divergences, {c.not_modelled} not modelled\n"
                )
                self.progress.flush()
        return not spent and time.monotonic() < self.search_deadline

    def run(self) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + self.budget_s
        self.search_deadline = self.started + self.budget_s * SEARCH_SHARE
        index = 0
        try:
            while self.run_round(self.seed * ROUND_SEED_STRIDE + index):
                index += 1
        finally:
            self.seconds = time.monotonic() - self.started
            self.write_findings()

    # ---- output ---------------------------------------------------------------------------------------
    def write_findings(self) -> None:
        for finding in self.findings.values():
            finding.path = write_finding(finding, self.runner, self.seed, self.found_dir)

    def summary(self) -> dict[str, Any]:
        c = self.counts
        minutes = self.seconds / 60 if self.seconds else 0.0
        return {
            "column": self.runner.target.column,
            "seed": self.seed,
            "round_seeds": self.round_seeds,
            "seconds": round(self.seconds, 1),
            "run_seconds": round(self.runner.run_seconds, 1),
            "runs": self.runner.runs,
            "cached": self.runner.cached,
            "sequences": c.sequences,
            # Every real run compares one step in lockstep (the last of its prefix): steps are runs.
            "steps": self.runner.runs,
            "steps_per_minute": round(self.runner.runs / minutes, 1) if minutes else 0.0,
            "agree": c.agree,
            "known_bug": c.known_bug,
            "not_modelled": c.not_modelled,
            "not_modelled_reasons": c.not_modelled_reasons,
            "skipped": c.skipped,
            "errors": c.errors,
            "error_details": c.error_details,
            "repeats": c.repeats,
            "deferred": c.deferred,
            "unstable": c.unstable,
            "unstable_details": c.unstable_details,
            "racing": c.racing,
            "rounds": c.rounds,
            "divergences": [finding_json(f) for f in self.findings.values()],
        }


def finding_id(column: str, signature: str) -> str:
    digest = hashlib.sha256(signature.encode()).hexdigest()[:10]
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in column.split(" ")[0]).lower()
    return f"fuzz-{safe}-{digest}"


def finding_json(finding: Finding) -> dict[str, Any]:
    check = finding.check
    return {
        "id": finding.path.name.removesuffix(".toml") if finding.path else None,
        "file": str(finding.path) if finding.path else None,
        "signature": finding.signature,
        "steps": len(finding.steps),
        "seed": finding.seed,
        "qemu": outcome_line(check.qemu) if check.qemu else None,
        "model": outcome_line(check.model) if check.model else None,
        "differences": check.comparison.differences if check.comparison else {},
    }


def write_finding(finding: Finding, runner: LockstepRunner, worker_seed: int, found_dir: Path) -> Path:
    """The finding as ``<found_dir>/fuzz-<version>-<signature digest>.toml`` (one file per signature and binary:
    a later run that finds the same gap rewrites it)."""
    target = runner.target
    binary = target.binary
    scenario_id = finding_id(target.column, finding.signature)
    check = finding.check
    header = [
        f"Found by migconform fuzz on QEMU {target.version} ({binary.path if binary else 'no binary'}),",
        f"seed {worker_seed} (round seed {finding.seed}); shrunk to {len(finding.steps)} step(s).",
        f"Replay: migconform run {scenario_id}.toml --qemu {binary.path if binary else 'BINARY'}",
        f"QEMU:  {outcome_line(check.qemu) if check.qemu else '-'}",
        f"model: {outcome_line(check.model) if check.model else '-'}",
    ]
    for name, (model, qemu) in (check.comparison.differences if check.comparison else {}).items():
        header.append(f"  {name}: model {model!r} | QEMU {qemu!r}")
    description = f"Minimal sequence found by migconform fuzz on QEMU {target.version}: {finding.signature}"
    text = scenario_text(scenario_id, description, runner.vm, finding.steps, header)
    path = found_dir / f"{scenario_id}.toml"
    write_found(path, text, finding.steps)
    return path
