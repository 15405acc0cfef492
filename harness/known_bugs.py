"""Divergences expected because real QEMU is wrong, each tied to a documented QEMU bug (docs/qemu-bugs.md).

The runner marks a comparison that matches an entry as a *known QEMU bug* (``Comparison.known_bug``): it is
reported (console, JSON, JUnit, HTML) but does not fail ``migconform run``/``conformance``, so a CI matrix goes
red only for something new.

An entry does not hide a failure: the case is asserted to *still* diverge (so a fixed QEMU, or a harness change
that stops the check from seeing the bug, fails the test and the entry has to go), and to diverge only in the
fields the bug explains (so another divergence in the same case still fails). Only then is the case reported
as an expected failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.compare import Comparison
from reference_impl.versions import Version


@dataclass(frozen=True)
class KnownDivergence:
    scenario: str
    version: str  # "major.minor": the entry applies to every micro release of it
    reason: str
    must_differ: str  # the field that shows the bug
    may_differ: frozenset[str]  # every field the bug can change (includes must_differ)

    def applies(self, scenario: str, version: Version) -> bool:
        return scenario == self.scenario and f"{version.major}.{version.minor}" == self.version

    def problems(self, comparison: Comparison) -> list[str]:
        """Why ``comparison`` is not this known divergence (empty when it is)."""
        if comparison.agree:
            return [
                f"known divergence gone: {self.scenario} on {self.version} now agrees ({self.reason}); "
                "remove its entry from harness/known_bugs.py and docs/qemu-bugs.md"
            ]
        problems = []
        if self.must_differ not in comparison.differences:
            problems.append(f"expected a difference in {self.must_differ!r} ({self.reason})")
        unexplained = sorted(set(comparison.differences) - self.may_differ)
        if unexplained:
            problems.append(f"differences the known bug does not explain: {', '.join(unexplained)}")
        return problems


# A guest that panics after the switchover ends its QEMU (-no-reboot, panic=-1); if that happens before the
# executor reads the final states, the destination is null and the verdict failed, not only the guest dead.
_GUEST_DEATH_FIELDS = frozenset({"guest", "verdict", "stage", "error", "destination.status", "destination.runstate"})

KNOWN_DIVERGENCES = (
    KnownDivergence(
        scenario="guest-precopy-tcp",
        version="7.2",
        reason="QEMU 7.2 under TCG loses dirty pages in multi-pass precopy (docs/qemu-bugs.md section 4)",
        must_differ="guest",
        may_differ=_GUEST_DEATH_FIELDS,
    ),
)


def known_divergence(scenario: str, version: Version) -> KnownDivergence | None:
    return next((k for k in KNOWN_DIVERGENCES if k.applies(scenario, version)), None)
