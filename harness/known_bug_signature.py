"""The signature of a known QEMU bug: which cases it applies to and which values it produces (harness.known_bugs
holds the entries).

Why a signature and not a list of fields: a known bug must not hide another failure of the same case, so each
field it may change carries a test of the value real QEMU produced (``Value``), grouped in the ways the bug was
seen to show (``Shape``); anything else that differs is a plain divergence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.scenario import Scenario
from contract.versions import Version
from harness.compare import Comparison


@dataclass(frozen=True)
class Value:
    """A test of the value real QEMU produced for one field, with the words a mismatch report uses."""

    description: str
    test: Callable[[Any], bool]

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, KeyError, AttributeError, ValueError):
            return False


def equals(expected: Any) -> Value:
    return Value(f"== {expected!r}", lambda value: value == expected)


def matches(pattern: str) -> Value:
    regex = re.compile(pattern)
    return Value(f"matches /{pattern}/", lambda value: isinstance(value, str) and regex.search(value) is not None)


def one_of(*values: Value) -> Value:
    return Value(" or ".join(v.description for v in values), lambda value: any(v(value) for v in values))


@dataclass(frozen=True)
class Shape:
    """One way a bug shows in a comparison.

    Every field of ``required`` differs and real QEMU's value passes its test; a field of ``optional`` may differ
    if QEMU's value passes its test; no other field differs.
    """

    required: Mapping[str, Value]
    optional: Mapping[str, Value] = field(default_factory=dict)

    def problems(self, differences: Mapping[str, list[Any]]) -> list[str]:
        problems = []
        for name, value in self.required.items():
            if name not in differences:
                problems.append(f"expected a difference in {name!r}")
            elif not value(differences[name][1]):
                problems.append(f"QEMU's {name} {differences[name][1]!r} does not match: {value.description}")
        for name, value in self.optional.items():
            if name in differences and not value(differences[name][1]):
                problems.append(f"QEMU's {name} {differences[name][1]!r} does not match: {value.description}")
        unexplained = sorted(set(differences) - set(self.required) - set(self.optional))
        if unexplained:
            problems.append(f"differences the known bug does not explain: {', '.join(unexplained)}")
        return problems


@dataclass(frozen=True)
class KnownDivergence:
    """A documented QEMU bug and its signature."""

    name: str  # short id, also the docs/qemu-bugs.md section it points to
    scenarios: frozenset[str]  # scenario ids the entry applies to
    versions: tuple[tuple[str, str], ...]  # inclusive "major.minor" ranges the bug was seen on
    accels: frozenset[str]  # accelerators it applies to (the real run's Outcome.accel)
    reason: str
    shapes: tuple[Shape, ...]  # any one of them is the bug
    # Or any scenario whose steps set up the bug's trigger (e.g. the sweep's generated scenarios).
    configuration: Callable[[Scenario], bool] | None = None
    # The bug shows in some runs only (a race inside QEMU): an agreeing run is QEMU getting lucky, not the bug
    # gone, so it is a plain agreement; a run that shows it must still match the signature.
    intermittent: bool = False

    def applies(self, scenario: Scenario | str, version: Version, accel: str | None = None) -> bool:
        """The case (scenario, version, accelerator) is one where the bug was seen; None: any accelerator."""
        scenario_id = scenario if isinstance(scenario, str) else scenario.id
        by_configuration = (
            not isinstance(scenario, str) and self.configuration is not None and self.configuration(scenario)
        )
        if scenario_id not in self.scenarios and not by_configuration:
            return False
        if accel is not None and accel not in self.accels:
            return False
        return any(
            Version.parse(low) <= Version(version.major, version.minor) <= Version.parse(high)
            for low, high in self.versions
        )

    @property
    def gone_message(self) -> str:
        return (
            f"known bug no longer reproduces: {self.name} ({self.reason}); remove its entry from "
            "harness/known_bugs.py and docs/qemu-bugs.md"
        )

    def problems(self, comparison: Comparison) -> list[str]:
        """Why ``comparison`` is not this known bug (empty when it is, or when an intermittent bug did not show)."""
        if comparison.agree:
            return [] if self.intermittent else [self.gone_message]
        per_shape = [shape.problems(comparison.differences) for shape in self.shapes]
        if any(not problems for problems in per_shape):
            return []
        return [f"not the signature of {self.name}: " + "; ".join(problems) for problems in per_shape]
