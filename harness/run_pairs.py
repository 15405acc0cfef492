"""The command line's side of cross-version runs: ``--cross``, ``--pair`` and conformance's cross set into
harness.cross_targets' plan (kept out of harness.commands.run, which is about outputs and options)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contract.scenario import Scenario
from harness.cross_targets import PairPlan, every_ordered_pair, matches, parse_pair_option, plan_items
from harness.errors import UsageError
from harness.loader import load_scenarios
from harness.targets import Target

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

Item = tuple[Scenario, Target]
# Conformance's cross-version scenarios: a subfolder of the bundled suite, so that every other reader of the
# suite (its ``*.toml``, not subfolders) sees the same-version suite it always did.
CROSS_SUITE = "cross"


def run_items(args: argparse.Namespace, scenarios: Sequence[Scenario], targets: Sequence[Target]) -> list[Item]:
    """The run's items: plain (each binary with itself), ``--cross`` or ``--pair``; pins apply in all three."""
    cross = bool(getattr(args, "cross", False)) or bool(getattr(args, "pair", None))
    return plan_items(scenarios, pair_plan(args, targets, cross=cross))


def pair_plan(args: argparse.Namespace, targets: Sequence[Target], *, cross: bool) -> PairPlan:
    """The pairs: ``--pair`` as named, else every ordered pair (``cross``), else each target with itself."""
    pool = list(targets)
    more = None if getattr(args, "profile", None) else _discovered
    pairs_given: Sequence[str] = getattr(args, "pair", None) or []
    if pairs_given:
        pairs = [_pair(text, pool) for text in pairs_given]
        pool += [t for pair in pairs for t in pair if t not in pool]
        return PairPlan(pairs=pairs, pool=pool, more=more)  # as named: 10.0:10.0 included
    if cross:
        pairs = every_ordered_pair(pool)
        if not pairs and getattr(args, "cross", False):
            have = ", ".join(t.column for t in pool) or "none"
            raise UsageError(f"--cross needs QEMUs of two versions at least (this run has: {have})")
        return PairPlan(pairs=pairs, cross=True, pool=pool, more=more)
    return PairPlan(pairs=[(t, t) for t in pool], pool=pool, more=more)


def _pair(text: str, pool: Sequence[Target]) -> tuple[Target, Target]:
    """One ``--pair``: each side among the run's targets (discovered binaries, ``--qemu``, ``--profile``)."""
    sides: list[Target] = []
    for side in parse_pair_option(text):
        found = next((t for t in pool if matches(t, side)), None)
        if found is None:
            have = ", ".join(t.column for t in pool) or "none"
            raise UsageError(f"--pair {text}: no QEMU {side} in this run (have: {have})")
        sides.append(found)
    return sides[0], sides[1]


def _discovered() -> list[QemuBinary]:
    """Binaries a pin may name beyond the run's own (discovery), none when discovery fails."""
    from harness.binaries import discover_binaries
    from harness.errors import MigconformError

    try:
        return list(discover_binaries())
    except MigconformError:
        return []


def cross_suite(args: argparse.Namespace, suite: Path, plain: Sequence[Scenario]) -> list[Scenario]:
    """Conformance's cross-version set (``suite``/cross/), ids distinct from the plain suite's."""
    folder = suite / CROSS_SUITE
    if not folder.is_dir():
        return []
    scenarios = load_scenarios([folder], no_exec=bool(getattr(args, "no_exec", False)))
    taken = {s.id for s in plain}
    for scenario in scenarios:
        if scenario.id in taken:
            raise UsageError(f"{scenario.path}: id {scenario.id!r} is also a scenario of the same-version suite")
    return scenarios
