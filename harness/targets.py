"""The columns of a run: a QEMU binary (the model at its version) or a model profile alone, and how many
items this host can compare on them (``--min-compared auto``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract.scenario import Scenario
from contract.versions import Version

if TYPE_CHECKING:
    from harness.binaries import QemuBinary


@dataclass(frozen=True)
class Target:
    """A column of the results: a binary (model at its version) or a model profile without a binary.

    A cross-version column (harness.cross_targets) also names the destination's version and binary; its
    column carries both ("7.2.22->10.0.2"), so its items stay apart from the same-version ones everywhere
    (results, merge, logs). ``missing``: a scenario pinned a QEMU this run does not have; the item is a skip
    with this reason and nothing runs.
    """

    column: str
    version: Version
    binary: QemuBinary | None = None
    destination_version: Version | None = None
    destination_binary: QemuBinary | None = None
    missing: str | None = None

    @property
    def cross(self) -> bool:
        return self.destination_version is not None


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


class _AnyDevice:
    """Stands in for a VFIO allocator when asking what the HOST lacks: VFIO is a resource, not a host
    capability, so a missing provider must not lower the floor."""

    name = "any"


def host_capable_items(
    scenarios: Sequence[Scenario], targets: Sequence[Target], items: Sequence[tuple[Scenario, Target]] | None = None
) -> tuple[int, list[str]]:
    """For ``--min-compared auto``: how many items this host can compare (every item but those whose
    declared ``requires`` capabilities (kvm, uffd, uffd-wp) or explicit accelerator it lacks, by the same
    checks the executor skips with, or whose pinned QEMU it does not have), and why each other item cannot.
    Resources (a VFIO provider, a guest image) never lower the count: a run without them shrank. VFIO
    scenarios are judged against this host's probe too (the suite's declare no capability but ``vfio``).
    ``items``: the run's items when they are not every scenario on every target (harness.cross_targets); a
    cross-version item needs both of its binaries to qualify."""
    if items is None:
        items = [(s, t) for t in targets for s in scenarios]
    capable = 0
    lacking: list[str] = []
    for scenario, target in items:
        if target.binary is None and target.missing is None:
            continue  # a model profile alone compares nothing
        why = target.missing
        for binary in (target.binary, target.destination_binary):
            if why is None and binary is not None:
                why = _host_lacks(scenario, binary)
        if why is None:
            capable += 1
        else:
            lacking.append(f"{scenario.id} [{target.column}]: {why}")
    return capable, lacking


def _host_lacks(scenario: Scenario, binary: QemuBinary) -> str | None:
    from harness.execution.preflight import unmet_requirement
    from harness.probe import choose_accel, probe_binary, probe_host

    probe = probe_binary(binary)
    why = unmet_requirement(scenario, probe, probe_host(), _AnyDevice())  # type: ignore[arg-type]
    for spec in (scenario.source, scenario.destination):
        requested = "kvm" if spec.accel == "auto" and "kvm" in scenario.requires else spec.accel
        if why is None and requested == "kvm":
            accel, reason = choose_accel(requested, probe, probe_host())
            why = None if accel is not None else reason
    return why
