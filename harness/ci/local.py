"""``migconform ci run-local PLAN``: a plan's jobs as a CI would run them, on this machine.

Each job is its own process in its own work folder (the plan's relative paths resolve there) with its own
TMPDIR, so jobs share nothing but the inputs, exactly as CI runners do; their ``ci-results/<cell>/``
folders are then gathered into one ``ci-results/`` the way artifacts are, and the merge job runs there.
A job's output goes to ``job.log`` in its results folder (the CI's job log). Jobs that fail (a divergence
exits 1) do not stop the others: the merge decides.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from harness.ci.plan import RESULTS_ROOT, Cell, Plan


@dataclass
class JobResult:
    cell: str
    status: int
    seconds: float


def _run_job(plan: Plan, cell: Cell, root: Path, project: Path) -> JobResult:
    work = root / "jobs" / cell.id
    out = work / plan.results_dir(cell)
    out.mkdir(parents=True, exist_ok=True)
    # Its own TMPDIR, short: QEMU's Unix sockets live there and their paths must stay under 108 bytes.
    tmp = tempfile.mkdtemp(prefix="migconform-ci-")
    env = {**os.environ, "TMPDIR": tmp}
    started = time.monotonic()
    status = 0
    try:
        with (out / "job.log").open("w", encoding="utf-8") as log:
            lab = plan.lab_argv(cell)
            before = ([lab] if lab else []) + plan.build_argvs(cell)
            for argv in before:  # a lab or a QEMU that cannot be built cannot be run
                status = status or _call(plan, argv, work, env, log, project)
            if status == 0:
                status = _call(plan, plan.run_argv(cell), work, env, log, project)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return JobResult(cell.id, status, round(time.monotonic() - started, 1))


def _call(plan: Plan, argv: list[str], cwd: Path, env: dict[str, str], log: TextIO, project: Path) -> int:
    """One command, logged; the words that name the project's files (the suite, the durations file, a
    relative migconform) are made absolute, as they resolve in a CI job's checkout."""
    files = {plan.suite, plan.cross_suite, plan.balance, plan.migconform[0], *(plan.lab_words() or [])}
    resolved = [_in_project(project, word) if word in files else word for word in argv]
    log.write("$ " + shlex.join(resolved) + "\n")
    log.flush()
    return subprocess.run(resolved, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def _in_project(project: Path, word: str) -> str:
    if Path(word).is_absolute():
        return word
    candidate = project / word
    return str(candidate) if candidate.exists() else word


def run_local(
    plan: Plan, root: Path, project: Path, jobs: int, report: TextIO | None = None
) -> tuple[list[JobResult], int]:
    """Runs every cell (``jobs`` at a time), gathers their folders into ``root/ci-results`` and merges there;
    returns the jobs' results and the merge's exit status. ``report``: default the standard error of the
    moment (not of import time, which a test's capture may have closed since)."""
    report = report or sys.stderr
    root.mkdir(parents=True, exist_ok=True)
    results: list[JobResult] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(lambda c: _run_job(plan, c, root, project), plan.cells):
            results.append(result)
            _say(report, f"ci run-local: {result.cell}: exit {result.status} ({result.seconds} s)")
    gathered = root / RESULTS_ROOT
    gathered.mkdir(exist_ok=True)
    for cell in plan.cells:
        source = root / "jobs" / cell.id / plan.results_dir(cell)
        if source.is_dir():  # moved, as artifacts are: the merge must find the logs beside the results
            target = root / plan.results_dir(cell)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(source), str(target))
    env = dict(os.environ)
    with (gathered / "merge.log").open("w", encoding="utf-8") as log:
        merge = plan.to_json()["merge"]
        status = 0
        for argv in (merge["plan_argv"], merge["argv"]):
            status = _call(plan, list(argv), root, env, log, project)
            if status != 0:
                break
    _say(report, f"ci run-local: merge: exit {status} (log: {gathered / 'merge.log'})")
    return results, status


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()
