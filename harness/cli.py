"""``migconform``: the command line (also ``python -m harness``).

Exit status (contract): 0 when every compared scenario agrees (skips allowed and counted), 1 when any
diverges or errs (or an interrupted run left items unrun, or a coverage floor set with ``--require-all`` /
``--min-compared`` does not hold), 2 for bad usage, unusable binaries or unloadable scenarios, and output
files that cannot be written (checked before anything runs). Extension: 3 when nothing diverged and the
harness did not fail, but the host did (out of memory or disk, a results file that cannot be written during
the run): an environment error, nothing to report to QEMU. Results files are written while the run goes,
so Ctrl-C keeps what finished.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from contract.policy import DEFAULT_WAIT_TIMEOUT_S
from harness.commands.report import cmd_merge, cmd_report
from harness.commands.run import cmd_conformance, cmd_run
from harness.commands.sweep import cmd_sweep
from harness.commands.usage import min_compared_type, positive_int
from harness.errors import HostEnvironmentError, UsageError
from harness.results import EXIT_ENVIRONMENT, EXIT_USAGE
from harness.runner import BACKENDS, KEEP_LOGS, ProviderUnavailable
from harness.scenario_error import ScenarioError


def _add_run_options(parser: argparse.ArgumentParser, *, outputs_default: bool = False) -> None:
    parser.add_argument(
        "--qemu",
        action="append",
        default=[],
        metavar="BINARY",
        help="QEMU binary, or version among those found (10.2), to test (repeatable; default: $QEMU_BINARY, the "
        "set-up script's versions, built QEMUs, PATH)",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="both", help="default: both (QEMU and the model)")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="VERSION",
        help="model profile for --backend reference (repeatable), e.g. 8.2",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="outcome records and comparisons")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="JUnit XML, one testcase per scenario x version")
    parser.add_argument("--html", type=Path, metavar="FILE", help="HTML report")
    parser.add_argument(
        "--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N", help="scenarios run in parallel"
    )
    parser.add_argument("--shard", metavar="K/N", help="run only the K-th of N stable slices of the scenarios")
    parser.add_argument(
        "--balance",
        metavar="FILE|counts",
        help="with --shard: slices balanced by the durations of an earlier results file (or counts), as "
        "`migconform ci plan` computes them",
    )
    parser.add_argument("--cell", metavar="ID", help="the `migconform ci plan` cell this run is (meta.cell)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_WAIT_TIMEOUT_S, metavar="S", help="bound of each wait (default 60)"
    )
    parser.add_argument("--vfio-provider", metavar="NAME", help="where VFIO devices come from (e.g. mtty)")
    parser.add_argument(
        "--vfio-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the VFIO provider (repeatable), e.g. variant=iovabm for mtty",
    )
    parser.add_argument(
        "--lab-kernel",
        metavar="SERIES",
        help="kernel series of the VFIO lab, e.g. 7.3 (implies --vfio-provider mtty; the same as --vfio-option "
        "series=SERIES; list: python -m harness.vfio_lab.build --list)",
    )
    parser.add_argument(
        "--vfio-device",
        action="append",
        default=[],
        metavar="BDF",
        help="a real host device for VFIO (repeatable; also $MIGCONFORM_VFIO_DEVICES): the host provider",
    )
    parser.add_argument(
        "--allow-rebind",
        action="store_true",
        help="with --vfio-device: bind devices to vfio-pci for the run and restore their drivers afterwards",
    )
    parser.add_argument(
        "--logs-dir",
        type=Path,
        metavar="DIR",
        help="where each item's QEMU logs go, one folder per item (default: logs/ beside --json, else results/logs)",
    )
    parser.add_argument(
        "--keep-logs",
        choices=KEEP_LOGS,
        default="failed",
        help="which items keep their logs folder (default failed: divergences, errors, known bugs)",
    )
    parser.add_argument(
        "--require-all",
        action="store_true",
        help="coverage floor: every item must be compared; any skip fails the run (exit 1) with its reason",
    )
    parser.add_argument(
        "--min-compared",
        type=min_compared_type,
        metavar="N|auto",
        help="coverage floor: fewer than N compared items fail the run (exit 1); auto: every item whose "
        "declared host capabilities (requires kvm/uffd/uffd-wp, accel) this host has, and --require-all when "
        "that is all of them",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="run each item's QEMU side N times (the model once) and report per-item stability; "
        "exit status 1 when an item's runs differ (default 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line, no table")
    parser.add_argument(
        "--no-exec",
        action="store_true",
        help="refuse (exit 2, before any QEMU starts) scenarios that would run a host command: transport exec, "
        "exec: URIs, tap/bridge netdevs, ... (docs/scenario-format.md#security)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migconform",
        description="Conformance harness for QEMU live migration: real QEMU against a reference model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run scenario files or folders")
    run.add_argument("paths", nargs="+", metavar="PATH", help="scenario files or folders of them")
    _add_run_options(run)
    run.add_argument("--cross", action="store_true", help="every ordered pair of the QEMU versions (7.2->10.0, ...)")
    run.add_argument(
        "--pair", action="append", default=[], metavar="SRC:DST", help="one cross-version pair (repeatable): 7.2:10.0"
    )

    conf = sub.add_parser("conformance", help="run the bundled suite; results/ gets JSON, JUnit and HTML")
    _add_run_options(conf)
    conf.add_argument("--results-dir", type=Path, default=Path("results"), metavar="DIR", help="default: results/")

    merge = sub.add_parser("merge", help="merge results files (e.g. shards)")
    merge.add_argument(
        "inputs", nargs="*", type=Path, metavar="RESULTS.json", help="default with --plan: its jobs' files"
    )
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.json")
    merge.add_argument("--junit", type=Path, metavar="FILE")
    merge.add_argument("--html", type=Path, metavar="FILE")
    merge.add_argument(
        "--plan", type=Path, metavar="PLAN.json", help="`migconform ci plan` JSON: every cell exactly once, or fail"
    )

    report = sub.add_parser("report", help="render a results file")
    report.add_argument("results", type=Path, metavar="RESULTS.json")
    report.add_argument("--html", type=Path, metavar="OUT.html")
    report.add_argument("--junit", type=Path, metavar="OUT.xml")
    report.add_argument(
        "--baseline", type=Path, metavar="OLD.json", help="what changed against an earlier results file"
    )

    sub.add_parser("qemus", help="the QEMU binaries found, their accelerators and host facts")

    sweep = sub.add_parser("sweep", help="every capability set of --size, model against QEMU")
    sweep.add_argument("--qemu", action="append", default=[], metavar="BINARY")
    sweep.add_argument("--backend", choices=BACKENDS, default="both", help="default: both (QEMU and the model)")
    sweep.add_argument("--size", type=positive_int, default=2, metavar="K", help="capabilities per set (default 2)")
    sweep.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N")
    sweep.add_argument("--transports", default="tcp,file", help="comma-separated (default tcp,file)")
    sweep.add_argument("--modes", default="precopy,postcopy,background-snapshot", help="comma-separated")
    sweep.add_argument("--shard", metavar="K/N", help="only the K-th of N slices of the generated scenarios")
    sweep.add_argument("--limit", type=positive_int, metavar="N", help="only the first N generated scenarios")
    sweep.add_argument(
        "--timeout", type=float, default=20.0, metavar="S", help="bound of each wait (default 20: the VMs are tiny)"
    )
    sweep.add_argument("--json", type=Path, metavar="FILE")
    sweep.add_argument("--html", type=Path, metavar="FILE")
    sweep.add_argument("--quiet", action="store_true")

    from harness import certify

    cert = sub.add_parser("certify", help="certify a VFIO device: JSON + HTML + JUnit bundle in -o DIR")
    certify.add_arguments(cert)

    from harness.fuzz import command as fuzz_command

    fuzz = sub.add_parser("fuzz", help="model-based fuzzing: hypothesis composes step sequences (docs/fuzzing.md)")
    fuzz_command.add_arguments(fuzz)

    from harness.mutants import run as mutants_run

    mutants = sub.add_parser(
        "mutants", help="mutation check: QEMU built from source with deliberate bugs must be caught (docs/mutants.md)"
    )
    mutants_run.add_arguments(mutants)

    from harness.qemu_build import command as qemu_command

    qemu = sub.add_parser("qemu", help="build a QEMU from Debian's source or a local one (docs/qemu-builds.md)")
    qemu_command.add_arguments(qemu)
    from harness.commands import ci as ci_command

    ci = sub.add_parser(
        "ci", help="CI matrices: a pipeline of QEMU x kernel x shard jobs, run here or in CI (docs/ci.md)"
    )
    ci_command.add_arguments(ci)

    from harness.commands import bisect as bisect_command

    bisect = sub.add_parser("bisect", help="the first commit of a QEMU git tree whose outcomes go wrong")
    bisect_command.add_arguments(bisect)
    return parser


def cmd_qemus(args: argparse.Namespace) -> int:
    from harness.binaries import discover_binaries
    from harness.qemus import format_qemus

    sys.stdout.write(format_qemus(discover_binaries()).rstrip("\n") + "\n")
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    from harness import certify

    return certify.main(args)


def cmd_fuzz(args: argparse.Namespace) -> int:
    from harness.fuzz import command as fuzz_command

    return fuzz_command.cmd_fuzz(args)


def cmd_mutants(args: argparse.Namespace) -> int:
    from harness.mutants import run as mutants_run

    return mutants_run.cmd_mutants(args)


def cmd_qemu(args: argparse.Namespace) -> int:
    from harness.qemu_build import command as qemu_command

    return qemu_command.cmd_qemu(args)


def cmd_ci(args: argparse.Namespace) -> int:
    from harness.commands import ci as ci_command

    return ci_command.cmd_ci(args)
def cmd_bisect(args: argparse.Namespace) -> int:
    from harness.commands import bisect as bisect_command

    return bisect_command.cmd_bisect(args)


COMMANDS = {
    "run": cmd_run,
    "conformance": cmd_conformance,
    "merge": cmd_merge,
    "report": cmd_report,
    "qemus": cmd_qemus,
    "sweep": cmd_sweep,
    "certify": cmd_certify,
    "mutants": cmd_mutants,
    "fuzz": cmd_fuzz,
    "qemu": cmd_qemu,
    "ci": cmd_ci,
    "bisect": cmd_bisect,
}


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"migconform: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ScenarioError as exc:
        _fail(str(exc))
    except (UsageError, ProviderUnavailable) as exc:
        _fail(str(exc))
    except HostEnvironmentError as exc:
        sys.stderr.write(f"migconform: environment error: {exc}\n")
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        sys.stderr.write("migconform: interrupted; results written so far are kept\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
