"""``migconform merge`` and ``migconform report``: results files already written, merged or rendered."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import results as results_io
from harness.commands.outputs import write_reports
from harness.errors import UsageError
from harness.report import console
from harness.results import Results


def _load_results(path: Path) -> Results:
    try:
        return results_io.load(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_merge(args: argparse.Namespace) -> int:
    merged = results_io.merge(_load_results(p) for p in args.inputs)
    write_reports(merged, args.output, args.junit, args.html)
    sys.stdout.write(console.render(merged))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    res = _load_results(args.results)
    write_reports(res, None, args.junit, args.html)
    sys.stdout.write(console.render(res))
    return 0
