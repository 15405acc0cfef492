"""Which (scenario, column) items a run holds once QEMU versions may differ between the two sides.

A plain run pairs every binary with itself, exactly as before cross-version runs existed. ``--cross`` pairs
every binary with every other one (both orders: 7.2 -> 10.0 and 10.0 -> 7.2 are different migrations) and
``--pair`` names the pairs. A scenario that pins a side's QEMU (``[source] qemu = "7.2"``) overrides that
side whatever the run pairs; a pin this host cannot satisfy becomes a skip naming what is missing, so a run
elsewhere says what it did not test rather than silently testing less.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract.outcome import Outcome
from contract.scenario import Scenario
from contract.versions import Version
from harness.errors import UsageError
from harness.qemu_pin import is_path_pin
from harness.results import HOST_SKIP, SKIP_KIND
from harness.targets import Target

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

ARROW = "->"


def cross_target(source: Target, destination: Target) -> Target:
    """The column of a migration from ``source`` to ``destination``; one target when both are the same."""
    if source.column == destination.column:
        return source
    return Target(
        column=f"{source.column}{ARROW}{destination.column}",
        version=source.version,
        binary=source.binary,
        destination_version=destination.version,
        destination_binary=destination.binary,
    )


def every_ordered_pair(targets: Sequence[Target]) -> list[tuple[Target, Target]]:
    """``--cross``: each target migrating to each other one, same-version pairs left out."""
    return [(a, b) for a in targets for b in targets if a.column != b.column and a.version != b.version]


def matches(target: Target, text: str) -> bool:
    """``text`` names ``target``: its version or a version prefix ("10.0" names 10.0.2), or its binary's path."""
    if is_path_pin(text):
        return target.binary is not None and target.binary.realpath == _realpath(text)
    version = str(target.version)
    return version == text or version.startswith(text + ".")


def _realpath(text: str) -> str:
    import os

    return os.path.realpath(text)


@dataclass
class PairPlan:
    """The pairs a run migrates between, before scenario pins.

    ``pairs``: (source, destination) same-version targets. ``cross``: same-version pairs that pins produce
    are left out unless the scenario pinned both sides. ``pool``: the targets pins resolve against first;
    ``more``: further binaries to look through (discovery) for a pin the pool lacks, or None (model profiles).
    """

    pairs: list[tuple[Target, Target]]
    cross: bool = False
    pool: list[Target] = field(default_factory=list)
    more: Callable[[], Sequence[QemuBinary]] | None = None

    def resolve(self, text: str) -> Target | str:
        """The target a pin names, or why there is none (the skip reason)."""
        for target in self.pool:
            if matches(target, text):
                return target
        found = list(self.more()) if self.more is not None else []
        for binary in found:
            single = Target(column=str(binary.version), version=binary.version, binary=binary)
            if matches(single, text):
                return single
        if is_path_pin(text) and self.more is not None:
            from harness.binaries import load_binary
            from harness.errors import BinaryError

            try:
                binary = load_binary(text, origin="scenario qemu")
            except BinaryError as exc:
                return f"QEMU {text}: {exc}"
            return Target(column=f"{binary.version} ({binary.path})", version=binary.version, binary=binary)
        have = sorted({str(t.version) for t in self.pool} | {str(b.version) for b in found})
        what = "QEMU" if self.more is not None else "model profile"
        return f"no {what} {text} found (found: {', '.join(have) or 'none'})"


def plan_items(scenarios: Sequence[Scenario], plan: PairPlan) -> list[tuple[Scenario, Target]]:
    """Every item of the run, scenario-major (a scenario's columns finish together), no column twice."""
    resolved: dict[str, Target | str] = {}

    def pin(text: str) -> Target | str:
        if text not in resolved:
            resolved[text] = plan.resolve(text)
        return resolved[text]

    items: list[tuple[Scenario, Target]] = []
    for scenario in scenarios:
        pins = (scenario.source.qemu, scenario.destination.qemu)
        seen: set[str] = set()
        for base in plan.pairs:
            sides = [pin(p) if p is not None else t for p, t in zip(pins, base, strict=True)]
            target = _pinned_target(pins, sides)
            if target is None or target.column in seen:
                continue
            if plan.cross and None in pins and target.missing is None and not target.cross:
                continue  # a pin turned this pair into one version: --cross runs versions that differ
            seen.add(target.column)
            items.append((scenario, target))
    return items


def _pinned_target(pins: tuple[str | None, str | None], sides: list[Target | str]) -> Target | None:
    source, destination = sides
    if isinstance(source, Target) and isinstance(destination, Target):
        return cross_target(source, destination)
    labels = [s.column if isinstance(s, Target) else str(p) for p, s in zip(pins, sides, strict=True)]
    reasons = [
        f"[{side}] qemu = {p!r}: {s}"
        for side, p, s in zip(("source", "destination"), pins, sides, strict=True)
        if isinstance(s, str)
    ]
    version = source.version if isinstance(source, Target) else _pin_version(pins[0])
    column = labels[0] if labels[0] == labels[1] else f"{labels[0]}{ARROW}{labels[1]}"
    return Target(column=column, version=version, missing="; ".join(reasons))


def _pin_version(text: str | None) -> Version:
    try:
        return Version.parse(text or "")
    except ValueError:
        return Version(0, 0)


def parse_pair_option(text: str) -> tuple[str, str]:
    """``--pair SOURCE:DESTINATION``: each side a version prefix or a binary's path."""
    source, sep, destination = text.partition(":")
    if not sep or not source or not destination or ":" in destination:
        raise UsageError(f"--pair {text}: expected SOURCE:DESTINATION, e.g. 7.2:10.0 (a version or a path each)")
    return source, destination


def missing_outcome(scenario: Scenario, target: Target) -> Outcome:
    """The real side of an item whose pinned QEMU this run lacks: a host skip (which QEMU versions are
    installed is the host's), so the model is not run either: there is nothing to compare it with."""
    return Outcome(
        scenario=scenario.id,
        backend="qemu",
        qemu_version=str(target.version),
        verdict="skipped",
        skip_reason=target.missing,
        extra={SKIP_KIND: HOST_SKIP},
    )


def cross_meta(items: Sequence[tuple[Scenario, Target]]) -> dict[str, Any]:
    """meta.cross: the cross-version columns of the run, so reports can draw a matrix per scenario."""
    pairs: dict[str, list[str]] = {}
    for _, target in items:
        if ARROW in target.column and target.column not in pairs:
            source, _, destination = target.column.partition(ARROW)
            pairs[target.column] = [source, destination]
    return {"cross": pairs} if pairs else {}
