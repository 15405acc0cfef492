"""``migconform bisect --source DIR --good REV --bad REV SCENARIO...``: the first commit of a QEMU git tree
whose outcome on the scenarios differs from the reference (docs/qemu-builds.md, "Bisecting a regression")."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from contract.scenario import Scenario
from harness.binaries import QemuBinary
from harness.bisect.driver import BisectResult, BisectStop, run_bisect
from harness.bisect.evaluate import AGAINST, QemuStepEvaluator, RunFn
from harness.bisect.git import GitTree
from harness.commands.usage import positive_int
from harness.loader import load_scenarios
from harness.results import EXIT_ENVIRONMENT, Results
from harness.runner import RunOptions, run_sync
from harness.targets import targets_for_binaries

EXIT_FOUND = 0
EXIT_INCONCLUSIVE = 1
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario files or folders of them")
    parser.add_argument("--source", type=Path, required=True, metavar="DIR", help="a QEMU git work tree")
    parser.add_argument("--good", required=True, metavar="REV", help="a commit whose outcomes are right")
    parser.add_argument("--bad", required=True, metavar="REV", help="a later commit whose outcomes are wrong")
    parser.add_argument(
        "--against",
        choices=AGAINST,
        default="model",
        help="bad = differs from the model's prediction (default) or from the good revision's outcome",
    )
    parser.add_argument("--jobs", type=positive_int, default=2, metavar="N", help="scenarios at once (default 2)")
    parser.add_argument(
        "--build-jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N", help="ninja jobs (default: CPUs)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="bound of each wait (default 60)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the steps and the answer as JSON")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the bisection like Ctrl-C (KeyboardInterrupt), so ``git bisect reset`` still runs; the
    runner's own handling (harness.procutil) takes over while scenarios run and chains to this one."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _runner(jobs: int, timeout: float) -> RunFn:
    def run(scenarios: Sequence[Scenario], binary: QemuBinary, backend: str) -> Results:
        options = RunOptions(backend=backend, jobs=jobs, timeout=timeout)
        return run_sync(scenarios, targets_for_binaries([binary]), options)

    return run


def _log(message: str) -> None:
    sys.stderr.write(f"bisect: {message}\n")
    sys.stderr.flush()


def report(result: BisectResult) -> str:
    """The answer: the first bad commit, what changed in the outcomes there, and what the steps cost."""
    lines: list[str] = []
    if result.first_bad is not None:
        lines.append(f"first bad commit: {result.first_bad} ({result.subjects.get(result.first_bad, '')})")
        evaluation = result.evaluation(result.first_bad)
        if evaluation is not None:
            lines.append(f"outcome change ({evaluation.reason}):")
            lines += [f"  {change}" for change in evaluation.changes]
    else:
        lines.append("no single first bad commit: only commits that could not be judged are left; it is one of")
        lines += [f"  {rev} ({result.subjects.get(rev, '')})" for rev in result.candidates]
    built = sum(1 for step in result.steps if step.build.startswith("built"))
    cached = sum(1 for step in result.steps if step.build == "cached")
    skipped = sum(1 for step in result.steps if step.verdict == "skip")
    seconds = sum(step.seconds for step in result.steps)
    lines.append(
        f"{len(result.steps)} commits evaluated ({built} built, {cached} from the cache, {skipped} skipped) "
        f"in {seconds:.0f} s"
    )
    return "\n".join(lines)


def cmd_bisect(args: argparse.Namespace) -> int:
    scenarios = load_scenarios(args.scenarios)
    tree = GitTree(args.source)
    started = time.monotonic()
    with _sigterm_as_interrupt():
        evaluator = QemuStepEvaluator(
            tree, scenarios, _runner(args.jobs, args.timeout), against=args.against, jobs=args.build_jobs, log=_log
        )
        try:
            result = run_bisect(tree, args.good, args.bad, evaluator, log=_log)
        except BisectStop as exc:
            sys.stderr.write(f"migconform: bisect: {exc}\n")
            return EXIT_ENVIRONMENT if exc.unjudged else EXIT_INCONCLUSIVE
        except KeyboardInterrupt:
            sys.stderr.write(f"migconform: bisect interrupted; {tree.path} is back on {tree.where()}\n")
            return EXIT_INTERRUPTED
    print(report(result))
    if args.json is not None:
        data = {**result.to_json(), "against": args.against, "seconds": round(time.monotonic() - started, 1)}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return EXIT_FOUND if result.first_bad is not None else EXIT_INCONCLUSIVE
