"""A mutation run's results into a verdict per mutant: KILLED, survived, or unexercised.

A mutant is KILLED when at least one scenario diverges from the model on it while the same scenario agrees
on the unmodified build; a divergence the unmodified build shows as well is a false alarm (the harness's
or the model's, not the mutant's). The JSON shape of the ``mutants`` section is documented in
docs/mutants.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.mutants.build import MUTANTS_DIR, UNMODIFIED, BuiltBinary, available_patches


def mutant_kind(name: str) -> str:
    """Which scenarios a mutant needs, from its name: ``vfio-*`` the VFIO set, everything else the core set."""
    return "vfio" if name.startswith("vfio-") else "core"


def patch_description(patch: Path) -> str:
    """The free text before the diff (what the patch breaks, in one paragraph)."""
    text = patch.read_text()
    head = text.split("\n--- ", 1)[0] if not text.startswith("--- ") else ""
    return " ".join(head.split())


@dataclass
class ScenarioDivergence:
    scenario: str
    differences: dict[str, list[Any]]

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "differences": self.differences}


@dataclass
class MutantResult:
    """One mutant's verdict; ``status`` is killed | survived | unexercised."""

    name: str
    kind: str
    patch: str
    patch_sha256: str | None
    description: str
    binary: str
    status: str = "unexercised"
    killed_by: list[ScenarioDivergence] = field(default_factory=list)
    compared: int = 0
    skipped: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    # Scenarios whose real outcome differs from the unmodified build's, whatever the model says.
    changed_vs_unmodified: list[ScenarioDivergence] = field(default_factory=list)
    # Divergences on scenarios where the unmodified build diverges too (not counted as kills).
    masked: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "patch": self.patch,
            "patch_sha256": self.patch_sha256,
            "description": self.description,
            "binary": self.binary,
            "status": self.status,
            "killed_by": [k.to_json() for k in self.killed_by],
            "compared": self.compared,
            "skipped": self.skipped,
            "errors": self.errors,
            "changed_vs_unmodified": [c.to_json() for c in self.changed_vs_unmodified],
            "masked": self.masked,
        }


@dataclass
class MutationReport:
    qemu_version: str
    source: str
    unmodified_binary: str
    unmodified_compared: int = 0
    false_alarms: list[ScenarioDivergence] = field(default_factory=list)
    unmodified_errors: list[dict[str, str]] = field(default_factory=list)
    mutants: list[MutantResult] = field(default_factory=list)
    builds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return sum(1 for m in self.mutants if m.status == "killed")

    @property
    def valid(self) -> bool:
        """The unmodified build agreed with the model everywhere it was compared, without harness errors."""
        return not self.false_alarms and not self.unmodified_errors and self.unmodified_compared > 0

    @property
    def passed(self) -> bool:
        return (
            self.valid and all(m.status == "killed" for m in self.mutants) and not any(m.errors for m in self.mutants)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "qemu_version": self.qemu_version,
            "source": self.source,
            "killed": self.killed,
            "total": len(self.mutants),
            "valid": self.valid,
            "unmodified": {
                "binary": self.unmodified_binary,
                "compared": self.unmodified_compared,
                "false_alarms": [f.to_json() for f in self.false_alarms],
                "errors": self.unmodified_errors,
            },
            "mutants": [m.to_json() for m in self.mutants],
            "builds": self.builds,
        }


def column_for(version: str, name: str) -> str:
    """The results column of a build: every build reports the same version, so the name tells them apart."""
    return f"{version} {name}"


def _normalised_outcome(outcome: Any) -> dict[str, Any]:
    """An outcome's compared fields after normalising host-specific parts with its own VFIO names."""
    from harness.compare import normalise

    names: Mapping[str, str] = outcome.extra.get("vfio_names") or {}
    return {
        "verdict": outcome.verdict,
        "stage": outcome.stage,
        "error": normalise(outcome.error, names),
        "source": None if outcome.source is None else outcome.source.to_json(),
        "destination": None if outcome.destination is None else outcome.destination.to_json(),
    }


def evaluate(
    results: Any, versions: Mapping[str, str], binaries: Mapping[str, BuiltBinary], mutants_dir: Path = MUTANTS_DIR
) -> MutationReport:
    """Turn a run's results (columns ``column_for(version, name)``) into verdicts per mutant.

    ``versions`` maps a build name to the version its binary reports; ``binaries`` the build records.
    """
    from harness.results import comparison_column, outcome_column

    unmod = binaries[UNMODIFIED]
    unmod_col = column_for(versions[UNMODIFIED], UNMODIFIED)
    by_col: dict[str, list[Any]] = {}
    for c in results.comparisons:
        by_col.setdefault(comparison_column(c), []).append(c)
    skips_by_col: dict[str, int] = {}
    for s in results.skips:
        skips_by_col[s.column] = skips_by_col.get(s.column, 0) + 1
    errors_by_col: dict[str, list[dict[str, str]]] = {}
    for e in results.errors:
        errors_by_col.setdefault(e.column, []).append(
            {"scenario": e.scenario, "backend": e.backend, "error": e.error.strip().splitlines()[-1]}
        )
    real: dict[tuple[str, str], Any] = {}
    for o in results.outcomes:
        if o.backend == "qemu":
            real[(o.scenario, outcome_column(o))] = o

    unmod_comparisons = by_col.get(unmod_col, [])
    report = MutationReport(
        qemu_version=versions[UNMODIFIED],
        source=unmod.record.source,
        unmodified_binary=str(unmod.binary),
        unmodified_compared=len(unmod_comparisons),
        false_alarms=[ScenarioDivergence(c.scenario, c.differences) for c in unmod_comparisons if not c.agree],
        unmodified_errors=errors_by_col.get(unmod_col, []),
    )
    agree_on_unmod = {c.scenario for c in unmod_comparisons if c.agree}
    patches = available_patches(mutants_dir)
    for name, built in binaries.items():
        report.builds.append(
            {
                "name": name,
                "rebuilt": built.rebuilt,
                "build_seconds": built.record.build_seconds,
                "binary": str(built.binary),
            }
        )
        if name == UNMODIFIED:
            continue
        col = column_for(versions[name], name)
        result = MutantResult(
            name=name,
            kind=mutant_kind(name),
            patch=built.record.patch or "",
            patch_sha256=built.record.patch_sha256,
            description=patch_description(patches[name]) if name in patches else "",
            binary=str(built.binary),
        )
        comparisons = by_col.get(col, [])
        result.compared = len(comparisons)
        result.skipped = skips_by_col.get(col, 0)
        result.errors = errors_by_col.get(col, [])
        for c in comparisons:
            if c.agree:
                continue
            if c.scenario in agree_on_unmod:
                result.killed_by.append(ScenarioDivergence(c.scenario, c.differences))
            else:
                result.masked.append(c.scenario)
        for (scenario, column), outcome in sorted(real.items()):
            if column != col:
                continue
            base = real.get((scenario, unmod_col))
            if base is None or outcome.verdict == "skipped" or base.verdict == "skipped":
                continue
            mine, theirs = _normalised_outcome(outcome), _normalised_outcome(base)
            diff = {k: [theirs[k], mine[k]] for k in mine if mine[k] != theirs[k]}
            if diff:
                result.changed_vs_unmodified.append(ScenarioDivergence(scenario, diff))
        if result.killed_by:
            result.status = "killed"
        elif result.compared - len(result.masked) > 0:
            result.status = "survived"
        else:
            result.status = "unexercised"
        report.mutants.append(result)
    return report
