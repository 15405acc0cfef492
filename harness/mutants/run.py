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
(harness/suite) plus mutants/scenarios, or from --scenarios.
The JSON shape of the ``mutants`` section is documented in docs/mutants.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.mutants.build import (
    MUTANTS_DIR,
    UNMODIFIED,
    BuildError,
    MutantBuilder,
    available_patches,
)
from harness.mutants.report import render_console, render_html
from harness.mutants.verdicts import MutationReport, column_for, evaluate, mutant_kind, patch_description
from harness.suite import SUITE_DIR

OWN_SCENARIOS = MUTANTS_DIR / "scenarios"
KINDS = ("core", "vfio")
DEFAULT_VFIO_PROVIDER = "mtty"


class MutantsUsageError(UsageError):
    """Bad usage or an unusable set-up the user can fix (exit status 2)."""


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
    parser.add_argument(
        "--mutant",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this mutant (repeatable; default: every mutants/*.patch)",
    )
    parser.add_argument(
        "--scenarios",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="scenario files or folders (repeatable; default: the bundled suite and mutants/scenarios)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="results with a 'mutants' section")
    parser.add_argument("--html", type=Path, metavar="FILE", help="HTML report with the mutation summary")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N", help="scenarios run in parallel")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="bound of each wait (default 60)")
    parser.add_argument(
        "--vfio-provider",
        default=DEFAULT_VFIO_PROVIDER,
        metavar="NAME",
        help="VFIO provider for the vfio-* mutants (default mtty; 'none' leaves them unexercised)",
    )
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
