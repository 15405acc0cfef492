"""One lockstep comparison: a sequence's steps so far, run as a whole scenario on a fresh real QEMU pair and on
the model (harness.runner, backend "both"), and compared the way ``migconform run`` compares.

Re-running the prefix after every step IS the lockstep comparison: the harness reads each side's state only at
its quiescent points (docs/scenario-format.md, "How a scenario is executed"), which exist at the end of a
scenario, so the state after step k is the outcome of the scenario made of steps 1..k. A fresh pair per prefix
also keeps one run's leftovers (a hung monitor, a port) out of the next comparison.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from contract.outcome import Outcome
from contract.policy import END_RACE
from contract.scenario import Scenario, Step, VmSpec
from harness import procutil
from harness.compare import Comparison
from harness.results import NOT_MODELLED_SKIP, Results
from harness.runner import RunOptions, run_sync
from harness.targets import Target

FUZZ_SCENARIO_ID = "fuzz"
# Each wait's bound: the VMs are tiny, so a wait that takes longer is stuck (a paused postcopy, a hung monitor).
FUZZ_TIMEOUT_S = 10.0
# Fields whose values say what kind of divergence it is; error texts count by their shape (quoted names and numbers
# blanked), the other fields (events, guest...) by name only, so that one model gap seen with another capability
# name or port is one finding, and two different refusals are two.
_STATE_FIELDS = ("verdict", "stage", "source.status", "source.runstate", "destination.status", "destination.runstate")
_TEXT_FIELDS = ("error",)
KINDS = ("agree", "known-bug", "diverge", "not-modelled", "racing", "skip", "error", "interrupted")
# "racing": not modelled only because the prefix ends while a migration runs at full speed (reference_impl.timing):
# its final states are timing, but a wait step after it makes the sequence predictable again.


class StopFuzzing(BaseException):
    """Not an error: the fuzzer's signal to end a hypothesis round where it is, a BaseException so that hypothesis
    lets it through rather than shrink it as a failure. ``reason``: ``interrupted`` (SIGINT/SIGTERM during a run,
    harness.procutil: the fuzzing stops like the run did), ``budget`` (the wall-time budget is spent) or
    ``shrink`` (hypothesis' shrinking had its time, harness.fuzz.session.HYPOTHESIS_SHRINK_S)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Check:
    """The result of one comparison: its kind (:data:`KINDS`), the comparison and both outcomes when compared."""

    kind: str
    seconds: float
    comparison: Comparison | None = None
    qemu: Outcome | None = None
    model: Outcome | None = None
    detail: str = ""

    @property
    def signature(self) -> str:
        """What a divergence is, for grouping: the fields that differ, with the values of the state fields."""
        if self.comparison is None:
            return ""
        parts = []
        for name in sorted(self.comparison.differences):
            model, qemu = self.comparison.differences[name]
            if name in _STATE_FIELDS or name in _TEXT_FIELDS:
                parts.append(f"{name}={_shape(model)}|{_shape(qemu)}")
            else:
                parts.append(name)
        return ";".join(parts)


def _shape(value: object) -> str:
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'*'", str(value)))


def scenario_for(steps: Sequence[Step], vm: VmSpec, scenario_id: str = FUZZ_SCENARIO_ID) -> Scenario:
    return Scenario(id=scenario_id, source=vm, destination=vm, steps=tuple(steps), tags=("fuzz",))


def classify(results: Results, seconds: float) -> Check:
    """The kind of one run's results (one item)."""
    by_backend = {o.backend: o for o in results.outcomes}
    qemu, model = by_backend.get("qemu"), by_backend.get("reference")
    if procutil.interrupted() is not None or results.not_run:
        return Check("interrupted", seconds, detail="interrupted")
    if results.errors:
        return Check("error", seconds, qemu=qemu, model=model, detail=results.errors[0].error.splitlines()[-1])
    if results.skips:
        skip = results.skips[0]
        kind = "not-modelled" if skip.kind == NOT_MODELLED_SKIP else "skip"
        if kind == "not-modelled" and END_RACE in skip.reason:
            kind = "racing"
        return Check(kind, seconds, qemu=qemu, model=model, detail=skip.reason)
    comparison = results.comparisons[0]
    if comparison.agree:
        kind = "agree"
    elif comparison.known_bug is not None:
        kind = "known-bug"
    else:
        kind = "diverge"
    return Check(kind, seconds, comparison, qemu, model, comparison.known_bug or "")


class LockstepRunner:
    """Runs prefixes on one target; counts the runs and the time spent inside them (the benchmark's QEMU fraction).

    A prefix already compared is answered from a cache instead of run again: hypothesis draws many sequences
    that share their first steps, and its shrinking replays the same prefixes over and over, so without it most
    of a budget would re-run known prefixes. ``fresh=True`` runs anyway (the re-run that confirms a divergence).
    """

    CACHE_MAX = 50_000

    def __init__(self, target: Target, vm: VmSpec, timeout: float = FUZZ_TIMEOUT_S) -> None:
        self.target = target
        self.vm = vm
        self.timeout = timeout
        self.run_seconds = 0.0
        self.runs = 0
        self.cached = 0
        self._cache: dict[str, Check] = {}

    def check(self, steps: Sequence[Step], *, fresh: bool = False) -> Check:
        key = repr(tuple(steps))
        hit = None if fresh else self._cache.get(key)
        if hit is not None:
            self.cached += 1
            return hit
        options = RunOptions(backend="both", jobs=1, timeout=self.timeout, keep_logs="none")
        started = time.monotonic()
        results = run_sync([scenario_for(steps, self.vm)], [self.target], options)
        seconds = time.monotonic() - started
        self.run_seconds += seconds
        self.runs += 1
        check = classify(results, seconds)
        if check.kind == "interrupted":
            raise StopFuzzing("interrupted")
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        self._cache[key] = check
        return check
