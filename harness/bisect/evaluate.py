"""One bisection step on real QEMU: build the checked-out tree with harness.qemu_build (the Store answers a
tree it has built, ccache makes the rest cheap), run the scenarios on it, and judge the commit.

Bad means an outcome differs from the reference: the model's prediction (``--against model``, a divergence no
known QEMU bug explains), or the good revision's own outcome (``--against good``: for a change the model does
not cover, or a model that does not agree with the good revision either). A commit that does not build, or
whose items end without an answer (a harness or host error), is skipped: it says nothing about the change.

Bisection builds live in their own Store (``<cache>/bisect-builds``), never in ``<cache>/qemu-builds``: every
build there is discovered and run by default (harness.binaries), and a bisection leaves one per commit it
tried. They share that Store's ccache and wheels, which is what makes a step cost minutes, not half an hour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from contract.outcome import Outcome
from contract.scenario import Scenario
from harness import procutil
from harness.binaries import QemuBinary, load_binary
from harness.bisect.driver import Evaluation
from harness.bisect.git import GitTree
from harness.buildkit import BuildError, InputDigest
from harness.compare import compare, skip_reason
from harness.errors import HostEnvironmentError
from harness.qemu_build.found import store_root
from harness.qemu_build.recipe import QemuRecipe, Source
from harness.results import Results
from harness.settings import cache_root

AGAINST = ("model", "good")
BISECT_STORE = "bisect-builds"


def bisect_store() -> Path:
    return cache_root() / BISECT_STORE


def _difference_lines(scenario: str, differences: dict[str, list[object]], ref: str) -> list[str]:
    return [f"{scenario}: {name}: {ref} {pair[0]!r}, this commit {pair[1]!r}" for name, pair in differences.items()]


def qemu_outcomes(results: Results) -> dict[str, Outcome]:
    return {outcome.scenario: outcome for outcome in results.outcomes if outcome.backend == "qemu"}


def judge(rev: str, results: Results, against: str, baseline: dict[str, Outcome] | None) -> Evaluation:
    """The verdict on one commit from its run's results (pure: tests/unit/test_bisect.py).

    ``baseline`` is the good revision's QEMU outcomes for ``--against good`` (None while judging the good
    revision itself, which is good by definition once it ran)."""
    if results.errors:
        first = results.errors[0]
        more = f" (and {len(results.errors) - 1} more)" if len(results.errors) > 1 else ""
        return Evaluation(rev, "skip", f"{first.scenario}: {first.kind} error: {first.error}{more}")
    changes: list[str] = []
    compared = 0
    if against == "model":
        for comparison in results.comparisons:
            compared += 1
            if comparison.diverges:
                changes += _difference_lines(comparison.scenario, comparison.differences, "model")
    else:
        if baseline is None:
            ran = [o for o in qemu_outcomes(results).values() if o.verdict != "skipped"]
            if not ran:
                return Evaluation(rev, "skip", "every scenario was skipped: " + _skips(results))
            return Evaluation(rev, "good", f"the reference: {len(ran)} scenario outcome(s) recorded")
        for scenario, outcome in sorted(qemu_outcomes(results).items()):
            before = baseline.get(scenario)
            if before is None or skip_reason(before, outcome) is not None:
                continue
            compared += 1
            comparison = compare(before, outcome)
            changes += _difference_lines(scenario, comparison.differences, "good revision")
    if compared == 0:
        return Evaluation(rev, "skip", "nothing compared: " + _skips(results))
    if changes:
        scenarios = sorted({line.split(":", 1)[0] for line in changes})
        return Evaluation(rev, "bad", f"{len(scenarios)} of {compared} differ ({', '.join(scenarios)})", tuple(changes))
    reference = "the model" if against == "model" else "the good revision"
    return Evaluation(rev, "good", f"{compared} of {compared} agree with {reference}")


def _skips(results: Results) -> str:
    return "; ".join(f"{skip.scenario}: {skip.reason}" for skip in results.skips) or "no outcome"


# (scenarios, binary, backend) -> the run's results: harness.commands.bisect runs them with harness.runner.
RunFn = Callable[[Sequence[Scenario], QemuBinary, str], Results]


class QemuStepEvaluator:
    """The real :data:`harness.bisect.driver.Evaluate`: build, run, judge. ``run`` runs the scenarios on a
    built binary with a backend (both, or qemu alone for ``--against good``) and returns the results."""

    def __init__(
        self,
        tree: GitTree,
        scenarios: Sequence[Scenario],
        run: RunFn,
        *,
        against: str = "model",
        jobs: int = 2,
        recipe: QemuRecipe | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.tree = tree
        self.scenarios = scenarios
        self.run = run
        self.against = against
        self.jobs = jobs
        self.log = log
        self.recipe = recipe or QemuRecipe(
            bisect_store(), jobs=jobs, log=log, ccache_dir=store_root() / "ccache", wheels_dir=store_root() / "wheels"
        )
        self.baseline: dict[str, Outcome] | None = None

    def __call__(self, rev: str) -> Evaluation:
        started = time.monotonic()
        # The git tree id stands for the content: hashing every file of a QEMU tree costs a minute a step.
        digest = InputDigest().text("git-content", self.tree.content_id()).key(64)
        source = Source(origin=f"built from {self.tree.path} at {rev[:12]}", digest=digest, tree=self.tree.path)
        try:
            built = self.recipe.build(source)
        except BuildError as exc:
            reason = f"build failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            return Evaluation(rev, "skip", reason, seconds=round(time.monotonic() - started, 1))
        build = "cached" if built.cached else f"built in {built.manifest.get('build_seconds')} s"
        backend = "both" if self.against == "model" else "qemu"
        try:
            binary = load_binary(built.binary, origin=str(built.manifest.get("origin", source.origin)))
            results = self.run(self.scenarios, binary, backend)
        except HostEnvironmentError as exc:
            return Evaluation(rev, "skip", f"cannot run the build: {exc}", build=build)
        if procutil.interrupted() is not None:
            raise KeyboardInterrupt
        evaluation = judge(rev, results, self.against, self.baseline)
        if self.against == "good" and self.baseline is None and evaluation.verdict == "good":
            self.baseline = qemu_outcomes(results)
        return replace(evaluation, seconds=round(time.monotonic() - started, 1), build=build)
