"""Per-item stability of a repeated run (``migconform run --repeat N``).

A divergence must mean QEMU differs from the model, not that a step raced QEMU's own threads. Running each
real item N times against one prediction shows which items give the same outcome every time. An item is
*stable* when every run gave the same outcome (the contract's fields, :func:`signature`) and no run errored;
*flaky* when the real outcomes differ. The JSON's ``stability`` section (docs/scenario-format.md) has one
:class:`Stability` per scenario x column; ``comparisons`` keeps one comparison per item (see
:func:`representative`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.outcome import Outcome
from harness.compare import Comparison, normalise

# The outcome fields a run's result is judged by: the ones the comparison looks at (informative fields such
# as the duration or ram_passes differ from run to run without meaning anything).
SIGNATURE_FIELDS = ("verdict", "stage", "error", "source", "destination", "events", "vfio_states", "guest")


def signature(outcome: Outcome) -> dict[str, Any]:
    """What two runs must share to count as the same outcome, as the comparison sees it: the error
    normalised like harness.compare does (auto-generated node names, ports, paths, VFIO host names differ
    from run to run); of the guest check only ``alive`` and ``bad_pages``."""
    data = outcome.to_json()
    vfio_names = [
        (str(device_id), str(host_name))
        for key in ("vfio_names", "vfio_names_destination")
        for device_id, host_name in dict(outcome.extra.get(key) or {}).items()
    ]
    out: dict[str, Any] = {}
    for name in SIGNATURE_FIELDS:
        value = data.get(name)
        if name == "error":
            value = normalise(outcome.error, vfio_names)
        if name == "guest" and isinstance(value, Mapping):
            value = {"alive": value.get("alive"), "bad_pages": value.get("bad_pages")}
        if name == "events" and isinstance(value, Mapping):
            value = {side: seq for side, seq in value.items() if seq}
        if value not in (None, {}, []):
            out[name] = value
    return out


def _key(sig: Mapping[str, Any]) -> str:
    return json.dumps(sig, sort_keys=True)


@dataclass
class SeenOutcome:
    """One distinct real outcome of an item, how many runs gave it, and whether the model agreed with it."""

    outcome: dict[str, Any]
    count: int
    agree: bool
    known_bug: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "count": self.count, "agree": self.agree}
        if self.known_bug:
            out["known_bug"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeenOutcome:
        return cls(dict(data["outcome"]), int(data["count"]), bool(data["agree"]), bool(data.get("known_bug")))


@dataclass
class Stability:
    """One scenario on one column over ``runs`` real runs."""

    scenario: str
    column: str
    runs: int
    agree: int = 0
    diverge: int = 0
    known_bug: int = 0
    error: int = 0
    skip: int = 0
    outcomes: list[SeenOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the harness errors of the runs that errored

    @property
    def flaky(self) -> bool:
        """More than one distinct real outcome."""
        return len(self.outcomes) > 1

    @property
    def stable(self) -> bool:
        """Every run gave the same outcome and none errored (whether it agrees with the model is separate)."""
        return not self.flaky and self.error == 0

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.flaky:
            return "flaky"
        if self.diverge:
            return "diverge"
        if self.skip == self.runs:
            return "skip"
        return "stable"

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "column": self.column,
            "runs": self.runs,
            "agree": self.agree,
            "diverge": self.diverge,
            "known_bug": self.known_bug,
            "error": self.error,
            "skip": self.skip,
            "stable": self.stable,
            "status": self.status,
            "outcomes": [o.to_json() for o in self.outcomes],
            "errors": list(self.errors),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stability:
        return cls(
            scenario=str(data["scenario"]),
            column=str(data["column"]),
            runs=int(data["runs"]),
            agree=int(data.get("agree", 0)),
            diverge=int(data.get("diverge", 0)),
            known_bug=int(data.get("known_bug", 0)),
            error=int(data.get("error", 0)),
            skip=int(data.get("skip", 0)),
            outcomes=[SeenOutcome.from_json(o) for o in data.get("outcomes") or []],
            errors=[str(e) for e in data.get("errors") or []],
        )


@dataclass
class Run:
    """One real run of an item: its outcome and, when the model's outcome was there to compare with, the
    comparison; or the harness error it ended in."""

    outcome: Outcome | None = None
    comparison: Comparison | None = None
    error: str | None = None


def aggregate(scenario: str, column: str, runs: Sequence[Run]) -> Stability:
    """Count the runs of one item and group their outcomes (first-seen order)."""
    result = Stability(scenario, column, runs=len(runs))
    seen: dict[str, SeenOutcome] = {}
    for run in runs:
        if run.error is not None or run.outcome is None:
            result.error += 1
            result.errors.append(run.error or "no outcome")
            continue
        comparison = run.comparison
        if run.outcome.verdict == "skipped" or comparison is None:
            result.skip += 1
        elif comparison.agree:
            result.agree += 1
        elif comparison.known_bug is not None:
            result.known_bug += 1
        else:
            result.diverge += 1
        sig = signature(run.outcome)
        key = _key(sig)
        if key in seen:
            seen[key].count += 1
        else:
            agree = comparison is not None and comparison.agree
            known = comparison is not None and not comparison.agree and comparison.known_bug is not None
            seen[key] = SeenOutcome(sig, 1, agree, known)
    result.outcomes = list(seen.values())
    return result


def representative(runs: Sequence[Run]) -> Run | None:
    """The run an item's single comparison (and real outcome) in ``comparisons``/``outcomes`` stands for: the
    first that diverged (so an item diverges when any run did, and shows how), else the first known-bug
    run, else the first run with an outcome. None when every run errored."""
    with_outcome = [r for r in runs if r.outcome is not None and r.error is None]
    for run in with_outcome:
        if run.comparison is not None and run.comparison.diverges:
            return run
    for run in with_outcome:
        if run.comparison is not None and not run.comparison.agree:
            return run
    return with_outcome[0] if with_outcome else None
