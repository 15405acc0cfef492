"""``migconform mutants``: does the harness notice when QEMU's migration gating is broken on purpose?

Each mutant is QEMU 10.x built from Debian's source with one small patch (mutants/*.patch) that removes
or weakens one check. The scenarios that matter for it run on the mutant and on the unmodified build of
the same source, each against the model at the binary's version. A mutant is KILLED when at least one
scenario diverges from the model on it while the same scenario agrees on the unmodified build; a
divergence that the unmodified build shows as well is the harness's or the model's, not the mutant's, and
is reported as a false alarm instead. A mutant none of whose scenarios could run (e.g. the VFIO lab is
missing) is UNEXERCISED, not survived: nothing was learnt about it.

Core mutants ("core-*") get every scenario without VFIO devices; VFIO mutants ("vfio-*") get the VFIO
scenarios, run through a VFIO provider (the mtty lab by default). Scenarios come from the bundled suite
(tests/conformance/scenarios) plus mutants/scenarios, or from --scenarios.
The JSON shape of the ``mutants`` section is documented in docs/mutants.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.mutants.build import (
    MUTANTS_DIR,
    REPO_ROOT,
    UNMODIFIED,
    BuildError,
    BuiltBinary,
    MutantBuilder,
    available_patches,
)

SUITE_DIR = REPO_ROOT / "tests" / "conformance" / "scenarios"
OWN_SCENARIOS = MUTANTS_DIR / "scenarios"
KINDS = ("core", "vfio")
DEFAULT_VFIO_PROVIDER = "mtty"


class MutantsUsageError(Exception):
    """Bad usage or an unusable set-up the user can fix (exit status 2)."""


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
        return self.valid and all(m.status == "killed" for m in self.mutants) and not any(
            m.errors for m in self.mutants
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


def evaluate(results: Any, versions: Mapping[str, str], binaries: Mapping[str, BuiltBinary],
             mutants_dir: Path = MUTANTS_DIR) -> MutationReport:
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
            {"scenario": e.scenario, "backend": e.backend, "error": e.error.strip().splitlines()[-1]})
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
        report.builds.append({"name": name, "rebuilt": built.rebuilt, "build_seconds": built.record.build_seconds,
                              "binary": str(built.binary)})
        if name == UNMODIFIED:
            continue
        col = column_for(versions[name], name)
        result = MutantResult(
            name=name, kind=mutant_kind(name), patch=built.record.patch or "",
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


def render_console(report: MutationReport) -> str:
    lines = [f"mutation check: QEMU {report.qemu_version} from {report.source}"]
    if report.valid:
        lines.append(f"unmodified build: agrees with the model on all {report.unmodified_compared} compared scenarios")
    else:
        lines.append(f"unmodified build: {len(report.false_alarms)} FALSE ALARM(S), "
                     f"{len(report.unmodified_errors)} error(s) in {report.unmodified_compared} compared scenarios")
        for f in report.false_alarms:
            lines.append(f"  false alarm {f.scenario}: {_diff_text(f.differences)}")
        for e in report.unmodified_errors:
            lines.append(f"  error {e['scenario']} ({e['backend']}): {e['error']}")
    width = max([len(m.name) for m in report.mutants] + [6])
    for m in report.mutants:
        head = f"{m.name:<{width}}  {m.status.upper():<11}"
        if m.status == "killed":
            head += " by " + ", ".join(k.scenario for k in m.killed_by)
        elif m.status == "survived":
            head += f" ({m.compared} scenarios agree with the model)"
        else:
            head += f" (no scenario could be compared; {m.skipped} skipped)"
        lines.append(head)
        for k in m.killed_by:
            lines.append(f"    {k.scenario}: {_diff_text(k.differences)}")
        for e in m.errors:
            lines.append(f"    error {e['scenario']} ({e['backend']}): {e['error']}")
        if m.masked:
            lines.append("    not counted (the unmodified build diverges there too): " + ", ".join(m.masked))
    lines.append(f"killed {report.killed}/{len(report.mutants)}"
                 + ("" if report.valid else " (INVALID: the unmodified build does not agree with the model)"))
    return "\n".join(lines) + "\n"


def render_html(report: MutationReport, results: Any) -> str:
    """The standard HTML report of the run, with the mutation summary above the scenario matrix."""
    from html import escape

    from harness.report import html

    page = html.render(results, title=f"migconform mutation check: QEMU {report.qemu_version}")
    colours = {"killed": "#e6f4ea", "survived": "#fde7e7", "unexercised": "#f1f1f1"}
    rows = []
    for m in report.mutants:
        how = "<br>".join(
            f"<b>{escape(k.scenario)}</b>: {escape(_diff_text(k.differences))}" for k in m.killed_by
        ) or escape(f"{m.compared} compared, {m.skipped} skipped")
        rows.append(f'<tr style="background:{colours.get(m.status, "#fff")}"><td><code>{escape(m.name)}</code>'
                    f'<div class="desc">{escape(m.description)}</div></td><td class="tag">{escape(m.status)}</td>'
                    f'<td class="msg">{how}</td></tr>')
    verdict = (f"unmodified build agrees with the model on all {report.unmodified_compared} compared scenarios"
               if report.valid else
               f"INVALID: the unmodified build diverges from the model on "
               f"{', '.join(f.scenario for f in report.false_alarms) or 'nothing'}"
               f" and has {len(report.unmodified_errors)} harness error(s)")
    section = (f'<h2>Mutants: killed {report.killed}/{len(report.mutants)}</h2><p class="meta">{escape(verdict)}. '
               f"Columns below: <code>{escape(report.qemu_version)} NAME</code> is the build with that patch.</p>"
               '<table class="matrix"><thead><tr><th class="scenario">mutant</th><th style="width:7em">status</th>'
               f"<th>killed by (model vs QEMU)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return page.replace('<div class="summary">', section + '<h2>Scenarios</h2><div class="summary">', 1)


def _diff_text(differences: Mapping[str, Sequence[Any]]) -> str:
    return "; ".join(f"{k}: model {ref!r}, qemu {got!r}" for k, (ref, got) in differences.items())


# --- running -----------------------------------------------------------------------------------------

def scenario_sets(paths: Sequence[Path]) -> dict[str, list[Any]]:
    """The scenarios of ``paths`` split into the core set and the VFIO set."""
    from harness.loader import load_scenarios
    from harness.runner import needs_vfio

    scenarios = load_scenarios([p for p in paths if p.exists()])
    seen: set[str] = set()
    unique = []
    for s in scenarios:
        if s.id not in seen:
            seen.add(s.id)
            unique.append(s)
    return {"core": [s for s in unique if not needs_vfio(s)], "vfio": [s for s in unique if needs_vfio(s)]}


def default_scenario_paths() -> list[Path]:
    return [p for p in (SUITE_DIR, OWN_SCENARIOS) if p.is_dir()]


@dataclass
class MutantsOptions:
    names: list[str] | None = None
    scenario_paths: list[Path] = field(default_factory=default_scenario_paths)
    jobs: int = 2
    timeout: float = 60.0
    vfio_provider: str | None = DEFAULT_VFIO_PROVIDER
    json_path: Path | None = None
    html_path: Path | None = None
    rebuild: bool = False
    progress: bool = True


def run_mutants(options: MutantsOptions, builder: MutantBuilder | None = None) -> tuple[MutationReport, Any]:
    """Build what is needed, run the scenario sets, evaluate; returns the report and the merged results."""
    from harness import results as results_io
    from harness.binaries import load_binary
    from harness.runner import RunOptions, run_sync
    from harness.targets import Target

    patches = available_patches()
    names = options.names if options.names else list(patches)
    unknown = [n for n in names if n not in patches]
    if unknown:
        raise MutantsUsageError(f"no such mutant: {', '.join(unknown)} (known: {', '.join(patches)})")
    sets = scenario_sets(options.scenario_paths)
    builder = builder or MutantBuilder()
    built = {b.name: b for b in builder.build([UNMODIFIED, *names], force=options.rebuild)}
    binaries = {name: load_binary(b.binary, origin=f"mutant {name}") for name, b in built.items()}
    versions = {name: str(b.version) for name, b in binaries.items()}

    def target(name: str) -> Target:
        return Target(column=column_for(versions[name], name), version=binaries[name].version, binary=binaries[name])

    vfio_provider = options.vfio_provider
    if vfio_provider is not None and any(mutant_kind(n) == "vfio" for n in names) and sets["vfio"]:
        from harness.runner import ProviderUnavailable, get_provider

        try:
            get_provider(vfio_provider, {})
        except ProviderUnavailable as exc:
            # Still run: the VFIO scenarios' real side is then skipped and the VFIO mutants come out
            # "unexercised" (exit status 1), which says more than refusing to run the core mutants.
            sys.stderr.write(f"migconform mutants: warning: {exc}; the vfio-* mutants stay unexercised\n")
            vfio_provider = None
    parts = []
    for kind in KINDS:
        kind_names = [n for n in names if mutant_kind(n) == kind]
        scenarios = sets[kind]
        if not kind_names or not scenarios:
            continue
        run_options = RunOptions(
            backend="both",
            jobs=options.jobs,
            timeout=options.timeout,
            vfio_provider=vfio_provider if kind == "vfio" else None,
            progress=sys.stderr if options.progress else None,
            meta={"mutants": kind},
        )
        targets = [target(UNMODIFIED), *(target(n) for n in kind_names)]
        parts.append(run_sync(scenarios, targets, run_options))
    merged = results_io.merge(parts) if parts else results_io.Results()
    report = evaluate(merged, versions, built)
    if options.json_path is not None:
        data = merged.to_json()
        data["mutants"] = report.to_json()
        results_io.write_atomic(options.json_path, json.dumps(data, indent=2) + "\n")
    if options.html_path is not None:
        results_io.write_atomic(options.html_path, render_html(report, merged))
    return report, merged


# --- command line ------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mutant", action="append", default=[], metavar="NAME",
                        help="run only this mutant (repeatable; default: every mutants/*.patch)")
    parser.add_argument("--scenarios", action="append", type=Path, default=[], metavar="PATH",
                        help="scenario files or folders (repeatable; default: the bundled suite and mutants/scenarios)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="results with a 'mutants' section")
    parser.add_argument("--html", type=Path, metavar="FILE", help="HTML report with the mutation summary")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="scenarios run in parallel")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="bound of each wait (default 60)")
    parser.add_argument("--vfio-provider", default=DEFAULT_VFIO_PROVIDER, metavar="NAME",
                        help="VFIO provider for the vfio-* mutants (default mtty; 'none' leaves them unexercised)")
    parser.add_argument("--build-only", action="store_true", help="build (or check) the binaries, run nothing")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even when the binaries are up to date")
    parser.add_argument("--list", action="store_true", help="list the mutants and their build state")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def cmd_mutants(args: argparse.Namespace) -> int:
    """Exit 0 when the unmodified build agrees everywhere and every mutant is killed; 1 otherwise."""
    patches = available_patches()
    if args.list:
        from harness.mutants.build import binary_path

        for name in [UNMODIFIED, *patches]:
            path = binary_path(name)
            state = "built" if path.is_file() else "not built"
            desc = patch_description(patches[name]) if name in patches else "Debian's source as is"
            print(f"{name:<34} {mutant_kind(name) if name != UNMODIFIED else '':<5} {state:<9} {desc}")
        return 0
    try:
        if args.build_only:
            builder = MutantBuilder()
            for b in builder.build([UNMODIFIED, *(args.mutant or patches)], force=args.rebuild):
                how = f"built in {b.record.build_seconds} s" if b.rebuilt else "up to date"
                print(f"{b.name:<34} {how:<20} {b.binary}")
            return 0
        options = MutantsOptions(
            names=args.mutant or None,
            scenario_paths=args.scenarios or default_scenario_paths(),
            jobs=args.jobs,
            timeout=args.timeout,
            vfio_provider=None if args.vfio_provider == "none" else args.vfio_provider,
            json_path=args.json,
            html_path=args.html,
            rebuild=args.rebuild,
            progress=not args.quiet,
        )
        report, _ = run_mutants(options)
    except (BuildError, MutantsUsageError) as exc:
        sys.stderr.write(f"migconform mutants: error: {exc}\n")
        return 2
    sys.stdout.write(render_console(report))
    return 0 if report.passed else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="migconform mutants", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd_mutants(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
