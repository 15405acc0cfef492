"""``migconform merge`` and ``migconform report``: results files already written, merged or rendered."""

from __future__ import annotations

import argparse
import sys

from harness import results as results_io
from harness.commands.outputs import load_results, write_reports
from harness.errors import UsageError
from harness.report import console
from harness.results import EXIT_FAILED


def cmd_merge(args: argparse.Namespace) -> int:
    if args.plan is not None:
        return _merge_plan(args)
    if not args.inputs:
        raise UsageError("merge: name the results files (or --plan PLAN.json)")
    merged = results_io.merge(load_results(p) for p in args.inputs)
    write_reports(merged, args.output, args.junit, args.html)
    sys.stdout.write(console.render(merged))
    return 0


def _merge_plan(args: argparse.Namespace) -> int:
    """A CI merge: written even with cells missing (the report shows what ran), but then it fails (exit 1)
    naming each; a cell twice or not in the plan is refused before anything is written (exit 2). Otherwise
    the status of a run over the whole matrix."""
    from harness.ci.merge import merge_with_plan
    from harness.ci.plan import load_plan

    done = merge_with_plan(load_plan(args.plan), args.inputs)
    write_reports(done.merged, args.output, args.junit, args.html)
    sys.stdout.write(console.render(done.merged))
    if done.missing:
        sys.stderr.write("migconform: merge: the plan's cells are not all there:\n")
        sys.stderr.write("".join(f"  {line}\n" for line in done.missing))
        return EXIT_FAILED
    return done.merged.exit_status


def cmd_report(args: argparse.Namespace) -> int:
    res = load_results(args.results)
    changes = None
    if args.baseline is not None:
        from harness.report.baseline import compare_runs

        changes = compare_runs(load_results(args.baseline), res, str(args.baseline))
        res.meta["baseline"] = changes.to_json()
    write_reports(res, None, args.junit, args.html)
    sys.stdout.write(console.render(res))
    if changes is not None:
        sys.stdout.write(changes.text())
    return 0
