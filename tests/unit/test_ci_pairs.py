"""``migconform ci plan`` with pairs (``--pairs``, ``--cross``): cells over the cross-version suite, their
shards, their jobs in the CI files, ``merge --plan`` with them, and the source x destination square after
such a merge (pure logic, no QEMU: tests/qemu/test_ci_local.py runs pair cells on real QEMU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_ci_plan import _expand, _merge, outcome, plan, write_cell  # tests/unit is on the path: no package

from harness import cli
from harness.ci import render
from harness.ci.plan import Cell, Plan, make_plan, pair_kernel
from harness.compare import Comparison
from harness.loader import load_scenarios
from harness.results import Results, load, save
from harness.shards import load_durations, select_balanced
from harness.suite import SUITE_DIR

CROSS_DIR = SUITE_DIR / "cross"


def pair_plan(kernels: list[str] | None = None, shards: int = 2, durations: str | None = None) -> Plan:
    pairs = {"pairs": ["7.2.22:build:10.2.2"], "cross": True, "cross_suite": str(CROSS_DIR)}
    return plan(kernels or ["6.12"], shards, durations, qemus=["7.2.22,10.0.2"], **pairs)


def test_pair_cells_run_the_cross_suite_with_their_pair() -> None:
    p = pair_plan()
    pairs = [c for c in p.cells if c.destination]
    assert [c.label for c in pairs if c.shard == 1] == ["7.2.22:build:10.2.2", "7.2.22:10.0.2", "10.0.2:7.2.22"]
    assert {c.kernel for c in pairs} == {"6.12"}  # the plan's lab kernel: cross VFIO scenarios run in the lab
    ids = [c.id for c in p.cells]
    assert len(set(ids)) == len(ids) and "p7.2.22_10.0.2_k6.12_s1of2" in ids
    assert all(re.fullmatch(r"[A-Za-z0-9._]+", i) for i in ids)
    built = next(c for c in pairs if c.destination == "build:10.2.2" and c.shard == 2)
    argv = p.run_argv(built)
    assert argv[:3] == ["migconform", "run", str(CROSS_DIR)]
    assert argv[3:11] == ["--qemu", "7.2.22", "--qemu", "10.2.2", "--pair", "7.2.22:10.2.2", "--lab-kernel", "6.12"]
    assert argv[argv.index("--shard") + 1] == "2/2" and argv.count("--qemu") == 2
    assert p.build_argvs(built) == [["migconform", "qemu", "build", "10.2.2"]]
    assert p.members(built) == p.pair_shard_members[1]
    cross_ids = sorted(s.id for s in load_scenarios([CROSS_DIR]))
    assert sorted(s for members in p.pair_shard_members for s in members) == cross_ids
    lab = next(c for c in p.cells if c.kernel == "6.12" and not c.destination)
    assert p.lab_argv(lab) == ["bash", "scripts/setup-lab.sh", "--series", "6.12"]
    assert p.run_argv(lab)[5:7] == ["--lab-kernel", "6.12"] and p.lab_argv(built) == p.lab_argv(lab)


def test_pair_cells_kernel_is_the_labs_default_else_the_first() -> None:
    """The lab's default series when the plan has it (6.1's mtty cannot migrate), else the first; none, no lab."""
    assert pair_kernel(["6.1", "6.12"]) == pair_kernel(["7.3", "6.12"]) == "6.12"
    assert pair_kernel(["6.1"]) == "6.1" and pair_kernel(["7.3", "7.2"]) == "7.3"
    assert pair_kernel([None]) is None and pair_kernel([]) is None
    assert {c.kernel for c in pair_plan(["6.1,6.12"]).cells if c.destination} == {"6.12"}
    bare = plan([], 2, qemus=["7.2.22,10.0.2"], cross=True, cross_suite=str(CROSS_DIR))
    pairs = [c for c in bare.cells if c.destination]
    assert bare.pair_kernel is None and {c.kernel for c in pairs} == {None}
    assert pairs[0].id == "p7.2.22_10.0.2_knone_s1of2" and all(bare.lab_argv(c) is None for c in pairs)
    assert "--lab-kernel" not in bare.run_argv(pairs[0]) and "pair_kernel" not in bare.to_json()["axes"]


def test_pair_kernel_round_trips_through_json_and_an_older_plan_keeps_none() -> None:
    p = pair_plan(["6.1,6.12"])
    data = json.loads(render.as_json(p))
    assert data["axes"]["pair_kernel"] == "6.12"
    again = Plan.from_json(data)
    assert again.pair_kernel == "6.12" and again.cells == p.cells
    assert [again.run_argv(c) for c in again.cells] == [p.run_argv(c) for c in p.cells]
    pair_job = next(j for j in data["jobs"] if "destination" in j["cell"])
    assert pair_job["cell"]["kernel"] == "6.12" and pair_job["lab_argv"][-2:] == ["--series", "6.12"]
    del data["axes"]["pair_kernel"]  # a plan written before pair cells had a kernel: its jobs' ids had none
    older = Plan.from_json(data)
    assert {c.kernel for c in older.cells if c.destination} == {None}
    assert {c.kernel for c in older.cells if not c.destination} == {"6.1", "6.12"}


def test_pair_cells_in_gitlab_github_and_json() -> None:
    p = pair_plan()
    cells = {c.id: c for c in p.cells}
    gl = yaml.safe_load(render.gitlab(p, setup=[], stage="test", header=""))
    seen = []
    for job in (render.GITLAB_CELL_JOB, render.GITLAB_PAIR_JOB):
        for entry in gl[job]["parallel"]["matrix"]:
            values = {f"${k}": v for k, v in sorted(entry.items(), key=lambda kv: -len(kv[0]))}
            assert _expand(gl[job]["script"][-1], values) == p.run_argv(cells[entry["CELL"]])
            seen.append(entry["CELL"])
    assert sorted(seen) == sorted(cells)
    for job in (render.GITLAB_CELL_JOB, render.GITLAB_PAIR_JOB):  # pair cells prepare their lab too
        assert any("setup-lab.sh --series" in line for line in gl[job]["script"])
    needs = [n["job"] for n in gl[render.GITLAB_MERGE_JOB]["needs"]]
    assert needs == [render.GITLAB_CELL_JOB, render.GITLAB_PAIR_JOB]
    gh = yaml.safe_load(render.github(p, setup=[], runs_on="x", header=""))
    seen = []
    for name in (render.GITHUB_CELL_JOB, render.GITHUB_PAIR_JOB):
        job = gh["jobs"][name]
        run_step = next(s for s in job["steps"] if s.get("name") == "run the cell")
        for entry in job["strategy"]["matrix"]["include"]:
            values = {"${{ matrix.%s }}" % k: v for k, v in entry.items()}  # noqa: UP031 - GitHub's braces
            assert _expand(run_step["run"], values) == p.run_argv(cells[entry["cell"]])
            seen.append(entry["cell"])
        assert any(s.get("name") == "prepare the VFIO lab" for s in job["steps"])
    assert sorted(seen) == sorted(cells)
    assert gh["jobs"][render.GITHUB_MERGE_JOB]["needs"] == [render.GITHUB_CELL_JOB, render.GITHUB_PAIR_JOB]
    data = json.loads(render.as_json(p))
    assert data["merge"]["needs"] == [c.id for c in p.cells] and Plan.from_json(data).cells == p.cells
    assert data["pair_shards"][0]["scenarios"] == p.pair_shard_members[0]
    assert data["shards"][0]["scenarios"] == p.shard_members[0]


def test_pair_shards_are_what_run_picks_from_the_cross_suite(tmp_path: Path) -> None:
    scenarios = load_scenarios([CROSS_DIR])
    res = Results(outcomes=[outcome(s.id, "qemu", (i % 5) / 2) for i, s in enumerate(scenarios[::2])])
    save(res, tmp_path / "r.json")
    p = pair_plan(shards=3, durations=str(tmp_path / "r.json"))
    weights = load_durations(tmp_path / "r.json")
    for k, members in enumerate(p.pair_shard_members, start=1):
        assert sorted(s.id for s in select_balanced(scenarios, k, 3, weights)) == sorted(members)


def test_cli_pairs_kernels_all_and_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.vfio_lab.kernels import lab_kernels

    p = make_plan(suite=str(SUITE_DIR), qemus=["10.0.2"], kernels=["all"], shards=1, durations=None,
                  migconform="migconform", keep_logs="failed", run_args="", plan_args=[])  # fmt: skip
    assert p.kernels == [k.series for k in lab_kernels()]
    for argv, message in (
        (["--qemu", "10.0.2", "--cross"], "--cross needs two QEMUs"),
        (["--qemu", "10.0.2", "--kernels", "5.0"], "no kernel series '5.0'"),
        (["--qemu", "10.0.2", "--pairs", "7.2"], "expected SOURCE:DESTINATION"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(["ci", "plan", *argv, "--format", "json"])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def write_pair_cell(root: Path, p: Plan, cell: Cell) -> Path:
    src, dst = ("7.2.22", "10.0.2") if cell.qemu.startswith("7.2") else ("10.0.2", "7.2.22")
    column = f"{src}->{dst}"
    res = Results(meta={"cell": cell.id, "shard": cell.shard_text, "versions": [column]})
    for sid in p.members(cell):
        q = outcome(sid, "qemu")
        q.extra["column"] = column
        res.outcomes.append(q)
        res.comparisons.append(Comparison(sid, column, True, {}))
    path = root / p.results_dir(cell) / "results.json"
    save(res, path)
    return path


@pytest.fixture
def crossed(tmp_path: Path) -> tuple[Path, Plan]:
    suite = tmp_path / "suite"
    (suite / "cross").mkdir(parents=True)
    for name in ("caps-block-alone", "caps-x-colo-alone"):
        (suite / f"{name}.toml").write_text((SUITE_DIR / f"{name}.toml").read_text())
    for name in ("cross-machine-7.2-tcp", "cross-caps-events-tcp", "cross-cancel-tcp"):
        (suite / "cross" / f"{name}.toml").write_text((CROSS_DIR / f"{name}.toml").read_text())
    p = make_plan(suite=str(suite), qemus=["7.2.22,10.0.2"], kernels=["6.1,6.12"], shards=2, durations=None,
                  migconform="migconform", keep_logs="failed", run_args="", plan_args=[], cross=True)  # fmt: skip
    assert p.cross_suite == str(suite / "cross")
    (tmp_path / "plan.json").write_text(render.as_json(p))
    return tmp_path, p


def _write_all(root: Path, p: Plan) -> list[Path]:
    return [write_pair_cell(root, p, c) if c.destination else write_cell(root, p, c.id) for c in p.cells]


def test_merge_plan_names_a_missing_or_doubled_pair_cell(
    crossed: tuple[Path, Plan], capsys: pytest.CaptureFixture[str]
) -> None:
    root, p = crossed
    paths = _write_all(root, p)
    gone = next(i for i, c in enumerate(p.cells) if c.destination)
    assert cli.main(_merge(root, *(paths[:gone] + paths[gone + 1 :]))) == 1
    assert f"missing cell {p.cells[gone].id} (pair 7.2.22:10.0.2" in capsys.readouterr().err
    again = root / "again.json"
    again.write_text(paths[-1].read_text())
    with pytest.raises(SystemExit) as exc:
        cli.main(_merge(root, *paths, again))
    assert exc.value.code == 2 and f"cell {p.cells[-1].id} twice" in capsys.readouterr().err


def test_cross_square_after_a_plan_merge_with_kernels(crossed: tuple[Path, Plan]) -> None:
    from harness.cross_matrix import cross_matrices, split_column
    from harness.report import build_matrix, cross_cells

    root, p = crossed
    assert cli.main(_merge(root, *_write_all(root, p))) == 0
    merged = json.loads((root / "m.json").read_text())
    assert {"7.2.22->10.0.2 / kernel 6.12", "10.0.2 / kernel 6.12"} <= set(merged["meta"]["versions"])
    assert merged["meta"]["ci"]["plan"]["pair_kernel"] == "6.12"
    squares = cross_cells(build_matrix(load(root / "m.json")))
    assert sorted(squares) == ["cross-cancel-tcp", "cross-caps-events-tcp", "cross-machine-7.2-tcp"]
    sources, destinations, cells = squares["cross-caps-events-tcp"]
    assert sources == ["7.2.22 / kernel 6.12", "10.0.2 / kernel 6.12"] and len(cells) == 2
    assert destinations == ["7.2.22", "10.0.2"]  # the kernel is the source row's: the destination is a version
    # A cross column that carries a lab kernel keeps its versions apart from the kernel.
    assert split_column("7.2.22->10.0.2 / kernel 6.12") == ("7.2.22", "10.0.2")
    rows = cross_matrices([("s", "7.2.22->10.0.2 / kernel 6.12", "a"), ("s", "7.2.22->10.0.2 / kernel 6.1", "b")])
    assert rows["s"] == {"7.2.22 / kernel 6.1": {"10.0.2": "b"}, "7.2.22 / kernel 6.12": {"10.0.2": "a"}}


def test_run_with_a_pair_runs_the_plans_pair_shard(tmp_path: Path) -> None:
    p = pair_plan(shards=3)
    out = tmp_path / "r.json"
    argv = ["run", str(CROSS_DIR), "--backend", "reference", "--profile", "7.2", "--profile", "10.0", "--quiet"]
    argv += ["--pair", "7.2:10.0", "--shard", "2/3", "--balance", "counts", "--cell", "c", "--json", str(out)]
    cli.main(argv)
    ran = json.loads(out.read_text())
    names = {o["scenario"] for o in ran["outcomes"]} | {s["scenario"] for s in ran["skips"]}
    assert sorted(names | {e["scenario"] for e in ran["errors"]}) == sorted(p.pair_shard_members[1])
