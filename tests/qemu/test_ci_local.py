"""``migconform ci run-local`` on real QEMU: a plan of 2 QEMUs x 2 lab kernels x 3 shards over a few fast
scenarios, each job its own process and folder, merged with ``--plan``, must give the verdicts of one
unsharded run per kernel of the same scenarios; the same results merged with a cell doubled or left out
must fail naming that cell. A plan with ``--cross`` adds pair cells over cross-version scenarios, which
must give the verdicts of an unsharded ``run --cross``. VFIO cells in the lab: tests/hw/test_ci_lab.py (each
lab job boots a nested guest, minutes under load).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import cli
from harness.binaries import discover_binaries
from harness.ci.plan import Plan, column_label, load_plan
from harness.report import build_matrix, verdict_text
from harness.results import load
from harness.suite import SUITE_DIR

VERSIONS = ("7.2.22", "10.0.2")
KERNELS = ("6.1", "6.12")
SUBSET = ("caps-block-alone", "caps-x-colo-alone", "caps-preempt-without-postcopy")
CROSS_SUBSET = ("cross-machine-7.2-tcp", "cross-caps-events-tcp")
MIGCONFORM = [sys.executable, "-m", "harness"]


@pytest.fixture(scope="module")
def versions() -> tuple[str, ...]:
    found = {str(b.version) for b in discover_binaries()}
    missing = [v for v in VERSIONS if v not in found]
    if missing:
        pytest.skip(f"QEMU {', '.join(missing)} not found (scripts/setup.sh installs both)")
    return VERSIONS


def _cells(path: Path, kernel: str | None = None) -> dict[tuple[str, str], tuple[str, str]]:
    """(scenario, column) -> (report kind, QEMU's verdict@stage); columns relabelled with the kernel."""
    out = {}
    for (scenario, column), cell in build_matrix(load(path)).cells.items():
        qemu = verdict_text(cell.qemu) if cell.qemu is not None else "-"
        out[(scenario, column_label(column, kernel))] = (cell.kind, qemu)
    return out


def _reference(suite: Path, out: Path, kernel: str | None) -> subprocess.CompletedProcess[str]:
    argv = [*MIGCONFORM, "run", str(suite), "--json", str(out), "--jobs", "2", "--quiet", "--keep-logs", "none"]
    argv += [arg for v in VERSIONS for arg in ("--qemu", v)]
    if kernel:
        argv += ["--vfio-provider", "mtty", "--vfio-option", f"series={kernel}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)


def run_matrix(
    tmp_path: Path, subset: Sequence[str], kernels: Sequence[str | None], shards: int, together: int = 2
) -> tuple[Plan, Path, Path]:
    """Unsharded runs (one per kernel, ``together`` at a time), then the plan run locally, as many jobs at a
    time: (plan, plan file, work folder), with the merged verdicts checked equal to the unsharded ones."""
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in subset:
        shutil.copy(SUITE_DIR / f"{name}.toml", suite)
    with ThreadPoolExecutor(max_workers=together) as pool:
        refs = list(pool.map(lambda k: (k, _reference(suite, tmp_path / f"ref-{k}.json", k)), kernels))
    for kernel, done in refs:
        assert done.returncode == 0, f"unsharded run on kernel {kernel}: {done.stderr[-2000:]}"

    plan_path = tmp_path / "plan.json"
    argv = ["ci", "plan", "--suite", str(suite), "--shards", str(shards), "--format", "json", "-o", str(plan_path)]
    argv += ["--qemu", ",".join(VERSIONS), "--durations", str(tmp_path / f"ref-{kernels[0]}.json")]
    argv += ["--migconform", " ".join(MIGCONFORM), "--run-args", "--jobs 1 --quiet", "--keep-logs", "all"]
    if any(kernels):
        argv += ["--kernels", ",".join(k for k in kernels if k)]
    assert cli.main(argv) == 0
    plan = load_plan(plan_path)
    assert len(plan.cells) == len(VERSIONS) * len(kernels) * shards

    work = tmp_path / "ci"
    status = cli.main(["ci", "run-local", str(plan_path), "--jobs", str(together), "--work-dir", str(work)])
    merged = work / "ci-results" / "merged.json"
    assert status == 0, (work / "ci-results" / "merge.log").read_text()[-3000:]
    expected: dict[tuple[str, str], tuple[str, str]] = {}
    for kernel in kernels:
        expected |= _cells(tmp_path / f"ref-{kernel}.json", kernel)
    assert _cells(merged) == expected
    assert len(expected) == len(subset) * len(VERSIONS) * len(kernels)
    assert (work / "ci-results" / "report.html").is_file()
    data = json.loads(merged.read_text())
    assert sorted(data["meta"]["ci"]["cells"]) == sorted(c.id for c in plan.cells)
    # The jobs' folders were moved like artifacts: each kept logs folder is found again beside its results.
    logs = [Path(o["logs"]) for o in data["outcomes"] if o["backend"] == "qemu"]
    assert len(logs) == len(expected) and all(p.is_dir() and work / "ci-results" in p.parents for p in logs)
    return plan, plan_path, work


def test_run_local_matches_an_unsharded_run(
    versions: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kernel axis is passed (the cells' ``--lab-kernel K`` after their lab's set-up, the unsharded runs'
    ``--vfio-option series=K``: the two spellings must agree) and labels the columns; these scenarios need no
    VFIO device, so no lab boots (tests/hw/test_ci_lab.py runs VFIO cells in the lab)."""
    plan, plan_path, work = run_matrix(tmp_path, SUBSET, KERNELS, 3)

    # The same results, a cell doubled or left out: refused by name.
    inputs = [work / plan.results_path(c) for c in plan.cells]
    doubled = tmp_path / "doubled.json"
    shutil.copy(inputs[4], doubled)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["merge", "--plan", str(plan_path), *map(str, inputs), str(doubled), "-o", str(tmp_path / "d.json")])
    assert exc.value.code == 2 and f"cell {plan.cells[4].id} twice" in capsys.readouterr().err
    without = [str(p) for p in inputs if p != inputs[2]]
    assert cli.main(["merge", "--plan", str(plan_path), *without, "-o", str(tmp_path / "m.json")]) == 1
    assert f"missing cell {plan.cells[2].id}" in capsys.readouterr().err


def test_run_local_pairs_match_unsharded_runs(versions: tuple[str, ...], tmp_path: Path) -> None:
    """2 QEMUs with ``--cross``, 2 shards: the QEMU cells and the pair cells (each pair over the cross-version
    scenarios, sharded over those) together give what ``run PLAIN`` and ``run CROSS --cross`` give."""
    plain, cross = tmp_path / "plain", tmp_path / "cross"
    plain.mkdir()
    cross.mkdir()
    for name in SUBSET[:2]:
        shutil.copy(SUITE_DIR / f"{name}.toml", plain)
    for name in CROSS_SUBSET:
        shutil.copy(SUITE_DIR / "cross" / f"{name}.toml", cross)
    qemus = [arg for v in VERSIONS for arg in ("--qemu", v)]
    refs = {"plain": [str(plain)], "cross": [str(cross), "--cross"]}

    def reference(name: str) -> subprocess.CompletedProcess[str]:
        argv = [*MIGCONFORM, "run", *refs[name], *qemus, "--json", str(tmp_path / f"ref-{name}.json")]
        argv += ["--jobs", "1", "--quiet", "--keep-logs", "none"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(refs, pool.map(reference, refs), strict=True))
    for name, run in done.items():
        assert run.returncode == 0, f"unsharded {name} run: {run.stderr[-2000:]}"

    plan_path = tmp_path / "plan.json"
    argv = ["ci", "plan", "--suite", str(plain), "--cross-suite", str(cross), "--cross", "--shards", "2"]
    argv += ["--qemu", ",".join(VERSIONS), "--format", "json", "-o", str(plan_path)]
    argv += ["--migconform", " ".join(MIGCONFORM), "--run-args", "--jobs 1 --quiet", "--keep-logs", "none"]
    assert cli.main(argv) == 0
    plan = load_plan(plan_path)
    assert len(plan.cells) == (len(VERSIONS) + 2) * 2 and sum(1 for c in plan.cells if c.destination) == 4
    work = tmp_path / "ci"
    status = cli.main(["ci", "run-local", str(plan_path), "--jobs", "2", "--work-dir", str(work)])
    assert status == 0, (work / "ci-results" / "merge.log").read_text()[-3000:]
    merged = work / "ci-results" / "merged.json"
    expected = _cells(tmp_path / "ref-plain.json") | _cells(tmp_path / "ref-cross.json")
    assert _cells(merged) == expected
    assert len(expected) == 2 * len(VERSIONS) + len(CROSS_SUBSET) * 2  # each cross scenario: both directions
    data = json.loads(merged.read_text())
    assert sorted(data["meta"]["ci"]["cells"]) == sorted(c.id for c in plan.cells)
    assert sorted(data["cross"]) == sorted(CROSS_SUBSET)  # the source x destination squares
    assert sorted(data["meta"]["versions"]) == sorted(VERSIONS)  # a pair cell's QEMUs are its pair's only
