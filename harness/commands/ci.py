"""``migconform ci plan`` and ``migconform ci run-local``: CI matrices (harness.ci, docs/ci.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from harness.ci.plan import LAB_SETUP
from harness.commands.usage import positive_int
from harness.errors import UsageError
from harness.runner import KEEP_LOGS

FORMATS = ("gitlab", "github", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ci_command", required=True, metavar="ACTION")
    plan = sub.add_parser(
        "plan", help="write a CI pipeline: one job per QEMU x kernel x shard and pair x shard, then a merge job"
    )
    plan.add_argument(
        "--qemu",
        action="append",
        default=[],
        metavar="Q[,Q...]",
        help="QEMUs of the matrix (repeatable or comma-separated): a version found on the runner (10.0.2), a "
        "path, or build:SPEC for a QEMU `migconform qemu build SPEC` builds first (cached)",
    )
    plan.add_argument(
        "--kernels",
        action="append",
        default=[],
        metavar="K[,K...]",
        help="VFIO lab kernel series (6.1,6.12), `all` (every row of the lab's kernel table) or `available` "
        "(those built here): each QEMU cell runs the mtty lab on one (--lab-kernel), pair cells on the lab's "
        "default if given, else the first; default: no lab",
    )
    plan.add_argument(
        "--pairs",
        action="append",
        default=[],
        metavar="SRC:DST[,...]",
        help="source:destination pairs (7.2.22:10.0.2, build:10.2.2:7.2.22): each gets cells running the "
        "cross-version suite with --pair, one per shard",
    )
    plan.add_argument("--cross", action="store_true", help="a pair for every ordered pair of the --qemu values")
    plan.add_argument(
        "--cross-suite",
        metavar="PATH",
        help="the pair cells' scenario folder (default: SUITE/cross, else harness/suite/cross)",
    )
    plan.add_argument(
        "--lab-setup",
        default=LAB_SETUP,
        metavar="CMD",
        help="what a lab kernel's job runs first, with --series S (default: bash scripts/setup-lab.sh; "
        "`none`: the runners have their labs)",
    )
    plan.add_argument("--shards", type=positive_int, default=1, metavar="N", help="jobs per QEMU x kernel")
    plan.add_argument(
        "--suite", default="harness/suite", metavar="PATH", help="scenario folder (default harness/suite)"
    )
    plan.add_argument(
        "--durations",
        metavar="RESULTS.json",
        help="balance the shards by the durations this earlier results file recorded (default: by counts); "
        "the jobs read it too, so commit it",
    )
    plan.add_argument("--format", choices=FORMATS, required=True)
    plan.add_argument("-o", "--output", type=Path, metavar="FILE", help="default: standard output")
    plan.add_argument("--migconform", default="migconform", metavar="CMD", help="the command jobs run migconform with")
    plan.add_argument(
        "--setup", action="append", default=[], metavar="LINE", help="a shell line each job runs first (repeatable)"
    )
    plan.add_argument("--keep-logs", choices=KEEP_LOGS, default="failed", help="the cells' --keep-logs")
    plan.add_argument(
        "--run-args", default="", metavar="ARGS", help="more options for every cell's run, e.g. '--jobs 2'"
    )
    plan.add_argument("--stage", default="test", help="GitLab stage of the jobs (default test)")
    plan.add_argument("--runs-on", default="ubuntu-latest", help="GitHub runner label (default ubuntu-latest)")

    local = sub.add_parser("run-local", help="run a JSON plan's jobs here as separate processes, then merge")
    local.add_argument("plan", type=Path, metavar="PLAN.json")
    local.add_argument("--jobs", type=positive_int, default=1, metavar="N", help="jobs at a time (default 1)")
    local.add_argument("--work-dir", type=Path, default=Path("ci-local"), metavar="DIR", help="default ci-local/")
    local.add_argument("--project", type=Path, default=Path("."), metavar="DIR", help="where relative paths point")


def _plan_args(args: argparse.Namespace) -> list[str]:
    """The options that decide the plan's content, in one order: the merge job re-creates the plan from them."""
    out: list[str] = []
    for qemu in args.qemu:
        out += ["--qemu", qemu]
    for kernels in args.kernels:
        out += ["--kernels", kernels]
    for pairs in args.pairs:
        out += ["--pairs", pairs]
    if args.cross:
        out.append("--cross")
    out += ["--shards", str(args.shards), "--suite", args.suite]
    if args.cross_suite:
        out += ["--cross-suite", args.cross_suite]
    if args.lab_setup != LAB_SETUP:
        out += ["--lab-setup", args.lab_setup]
    if args.durations:
        out += ["--durations", args.durations]
    if args.migconform != "migconform":
        out += ["--migconform", args.migconform]
    if args.keep_logs != "failed":
        out += ["--keep-logs", args.keep_logs]
    if args.run_args:
        out.append(f"--run-args={args.run_args}")  # one word: a value "--quiet" is no option
    return out


def cmd_plan(args: argparse.Namespace) -> int:
    from harness.ci import render
    from harness.ci.plan import make_plan, plan_kernels
    from harness.commands.outputs import check_writable

    if args.output is not None:
        check_writable(args.output, "-o")
    # ``available`` depends on this machine's cache: the merge job re-creates the plan with the series it meant.
    kernels = [k for k in plan_kernels(args.kernels) if k]
    args.kernels = [",".join(kernels)] if kernels else []
    plan = make_plan(
        suite=args.suite,
        qemus=args.qemu,
        kernels=args.kernels,
        shards=args.shards,
        durations=args.durations,
        migconform=args.migconform,
        keep_logs=args.keep_logs,
        run_args=args.run_args,
        plan_args=_plan_args(args),
        pairs=args.pairs,
        cross=args.cross,
        cross_suite=args.cross_suite,
        lab_setup=args.lab_setup,
    )
    argv = shlex.join(["migconform", "ci", "plan", *_plan_args(args), "--format", args.format])
    header = (
        f"# Written by: {argv}\n# {len(plan.cells)} cells and a merge job (docs/ci.md). Re-create it, do not edit.\n"
    )
    if args.format == "gitlab":
        text = render.gitlab(plan, setup=args.setup, stage=args.stage, header=header)
    elif args.format == "github":
        text = render.github(plan, setup=args.setup, runs_on=args.runs_on, header=header)
    else:
        text = render.as_json(plan)
    if args.output is None:
        sys.stdout.write(text)
    else:
        from harness import results as results_io

        results_io.write_atomic(args.output, text)
        sys.stderr.write(f"ci plan: {len(plan.cells)} cells, {plan.shards} shards by {plan.balance}: {args.output}\n")
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    from harness.ci.local import run_local
    from harness.ci.plan import load_plan

    plan = load_plan(args.plan)
    if args.work_dir.exists() and any(args.work_dir.iterdir()):
        raise UsageError(f"--work-dir {args.work_dir}: not empty (each run-local starts from nothing, like a CI)")
    jobs, status = run_local(plan, args.work_dir.resolve(), args.project.resolve(), args.jobs)
    failed = [j.cell for j in jobs if j.status != 0]
    if failed:
        sys.stderr.write(f"ci run-local: {len(failed)} jobs exited non-zero: {', '.join(failed)}\n")
    return status


def cmd_ci(args: argparse.Namespace) -> int:
    if args.ci_command == "plan":
        return cmd_plan(args)
    return cmd_run_local(args)
