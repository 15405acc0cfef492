"""``migconform ci plan``, balanced shards and ``merge --plan``: the CI files parsed back, every cell present,
the shards one computation; results files written here (pure logic, no QEMU: tests/qemu/test_ci_local.py
runs a plan on real QEMU)."""

from __future__ import annotations

import json
import random
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.outcome import Outcome, VmState
from harness import cli
from harness.ci import render
from harness.ci.plan import Plan, make_plan
from harness.compare import Comparison
from harness.loader import load_scenarios
from harness.report import html
from harness.results import Results, Skip, save
from harness.shards import balanced_assignment, load_durations, select_balanced, weights_for
from harness.suite import SUITE_DIR

QEMUS = ["7.2.22", "10.0.2", "build:10.2"]


def plan(kernels: list[str] | None = None, shards: int = 3, durations: str | None = None, **more: Any) -> Plan:
    """``more``: further make_plan options (``qemus``, the pair axis)."""
    return make_plan(
        suite=str(SUITE_DIR),
        qemus=more.pop("qemus", [",".join(QEMUS)]),
        kernels=kernels if kernels is not None else ["6.1,6.12"],
        shards=shards,
        durations=durations,
        migconform="migconform",
        keep_logs="failed",
        run_args="",
        plan_args=["--shards", str(shards)],
        **more,
    )


def test_lpt_assignment_is_balanced_complete_and_order_free() -> None:
    durations = {"a": 9000, "b": 7000, "c": 6000, "d": 5000, "e": 4000, "f": 1000}
    ids = [*durations, "new1", "new2"]
    got = balanced_assignment(ids, durations, 3)
    assert sorted(got) == sorted(ids) and set(got.values()) == {1, 2, 3}
    shuffled = ids[:]
    random.Random(4).shuffle(shuffled)
    assert balanced_assignment(shuffled, durations, 3) == got
    weights = weights_for(ids, durations)
    assert weights["new1"] == 6000  # an unrecorded scenario weighs the (upper) median of the recorded ones
    loads = [sum(weights[i] for i, k in got.items() if k == shard) for shard in (1, 2, 3)]
    assert max(loads) - min(loads) <= max(weights.values())  # LPT: within one item of each other
    assert got["a"] == 1 and got["b"] == 2 and got["c"] == 3  # longest first, each to the least loaded


def test_counts_balance_gives_equal_sizes() -> None:
    got = balanced_assignment([f"s{i:02}" for i in range(10)], load_durations("counts"), 3)
    assert sorted(list(got.values()).count(k) for k in (1, 2, 3)) == [3, 3, 4]


def test_durations_read_from_a_results_file(tmp_path: Path) -> None:
    res = Results(outcomes=[outcome("x", "qemu", 1.5), outcome("x", "qemu", 2.5), outcome("y", "reference", 9.0)])
    save(res, tmp_path / "r.json")
    assert load_durations(tmp_path / "r.json") == {"x": 2000}
    with pytest.raises(ValueError, match="no such file"):
        load_durations(tmp_path / "none.json")


def test_run_selects_exactly_the_plans_shards(tmp_path: Path) -> None:
    scenarios = load_scenarios([SUITE_DIR])
    res = Results(outcomes=[outcome(s.id, "qemu", (i % 7) / 3) for i, s in enumerate(scenarios[::3])])
    save(res, tmp_path / "r.json")
    p = plan(shards=4, durations=str(tmp_path / "r.json"))
    weights = load_durations(tmp_path / "r.json")
    seen: list[str] = []
    for k, members in enumerate(p.shard_members, start=1):
        assert [s.id for s in select_balanced(scenarios, k, 4, weights)] == sorted(members, key=_suite_order)
        seen += members
    assert sorted(seen) == sorted(s.id for s in scenarios)


def _suite_order(sid: str, _order: dict[str, int] = {}) -> int:  # noqa: B006 - a cache
    if not _order:
        _order.update({s.id: i for i, s in enumerate(load_scenarios([SUITE_DIR]))})
    return _order[sid]


def _expand(template: str, values: dict[str, str]) -> list[str]:
    for name, value in values.items():
        template = template.replace(name, value)
    return shlex.split(template)


def test_gitlab_pipeline_has_every_cell_and_a_merge_after_all() -> None:
    p = plan()
    doc = yaml.safe_load(render.gitlab(p, setup=["pip install migconform"], stage="test", header="# x\n"))
    assert set(doc) == {render.GITLAB_CELL_JOB, render.GITLAB_MERGE_JOB}
    job = doc[render.GITLAB_CELL_JOB]
    matrix = job["parallel"]["matrix"]
    cells = {c.id: c for c in p.cells}
    assert sorted(entry["CELL"] for entry in matrix) == sorted(cells) and len(cells) == 3 * 2 * 3
    template = job["script"][-1]
    for entry in matrix:
        cell = cells[entry["CELL"]]
        values = {f"${k}": v for k, v in sorted(entry.items(), key=lambda kv: -len(kv[0]))}
        assert _expand(template, values) == p.run_argv(cell)
        assert entry.get("QEMU_BUILD") == cell.build
    assert job["artifacts"]["when"] == "always" and "ci-results/" in job["artifacts"]["paths"]
    assert job["cache"]["key"] == "migconform-qemu-$QEMU_BUILD"
    merge = doc[render.GITLAB_MERGE_JOB]
    assert merge["needs"] == [{"job": render.GITLAB_CELL_JOB, "artifacts": True}] and merge["when"] == "always"
    assert merge["script"][0] == "pip install migconform"
    assert shlex.split(merge["script"][-1])[:4] == ["migconform", "merge", "--plan", "ci-results/plan.json"]
    assert merge["artifacts"]["reports"]["junit"] == "ci-results/merged.xml"


def test_github_workflow_has_every_cell_and_a_merge_after_all() -> None:
    p = plan()
    doc = yaml.safe_load(render.github(p, setup=[], runs_on="self-hosted", header=""))
    assert set(doc["on"]) == {"push", "pull_request", "workflow_dispatch"}  # "on" quoted: not YAML 1.1's True
    job = doc["jobs"][render.GITHUB_CELL_JOB]
    include = job["strategy"]["matrix"]["include"]
    cells = {c.id: c for c in p.cells}
    assert sorted(entry["cell"] for entry in include) == sorted(cells)
    assert job["strategy"]["fail-fast"] is False
    run_step = next(s for s in job["steps"] if s.get("name") == "run the cell")
    for entry in include:
        values = {"${{ matrix.%s }}" % k: v for k, v in entry.items()}  # noqa: UP031 - GitHub's braces
        assert _expand(run_step["run"], values) == p.run_argv(cells[entry["cell"]])
        assert entry["qemu_build"] == (cells[entry["cell"]].build or "")
    upload = job["steps"][-1]
    assert upload["if"] == "always()" and upload["with"]["path"] == "ci-results/"
    merge = doc["jobs"][render.GITHUB_MERGE_JOB]
    assert merge["needs"] == [render.GITHUB_CELL_JOB] and merge["if"] == "always()"
    assert "migconform merge --plan ci-results/plan.json" in merge["steps"][-2]["run"]


def test_json_plan_round_trips_and_lists_each_job(tmp_path: Path) -> None:
    p = plan(kernels=[])
    data = json.loads(render.as_json(p))
    assert Plan.from_json(data).cells == p.cells
    assert [j["id"] for j in data["jobs"]] == data["merge"]["needs"] == [c.id for c in p.cells]
    job = data["jobs"][-1]
    assert job["build_argv"] == ["migconform", "qemu", "build", "10.2"]
    assert "--vfio-provider" not in job["argv"] and job["argv"][job["argv"].index("--cell") + 1] == job["id"]


def test_cli_plan_writes_the_file_and_refuses_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pipeline.yml"
    argv = ["ci", "plan", "--qemu", "10.0.2", "--shards", "2", "--suite", str(SUITE_DIR), "--format", "gitlab"]
    assert cli.main([*argv, "-o", str(out)]) == 0
    assert len(yaml.safe_load(out.read_text())[render.GITLAB_CELL_JOB]["parallel"]["matrix"]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["ci", "plan", "--qemu", "10.0.2,10.0.2", "--format", "json"])
    assert exc.value.code == 2 and "named twice" in capsys.readouterr().err


# merge --plan, over results files written here


def outcome(sid: str, backend: str, duration: float = 1.0, verdict: str = "completed") -> Outcome:
    out = Outcome(sid, backend, "10.0.2", verdict, source=VmState("completed", "postmigrate"))
    out.duration_s = duration
    return out


def write_cell(root: Path, p: Plan, cell_id: str, *, agree: bool = True, name: str = "results.json") -> Path:
    cell = p.cell(cell_id)
    assert cell is not None
    res = Results(meta={"cell": cell.id, "shard": cell.shard_text, "versions": ["10.0.2"]})
    for sid in p.shard_members[cell.shard - 1]:
        res.outcomes += [outcome(sid, "qemu"), outcome(sid, "reference")]
        res.comparisons.append(Comparison(sid, "10.0.2", agree, {} if agree else {"verdict": ["a", "b"]}))
    path = root / p.results_dir(cell) / name
    save(res, path)
    return path


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Plan]:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("caps-block-alone", "caps-x-colo-alone", "caps-compress-xbzrle"):
        (suite / f"{name}.toml").write_text((SUITE_DIR / f"{name}.toml").read_text())
    p = make_plan(suite=str(suite), qemus=["10.0.2"], kernels=["6.1,6.12"], shards=2, durations=None,
                  migconform="migconform", keep_logs="failed", run_args="", plan_args=[])  # fmt: skip
    (tmp_path / "plan.json").write_text(render.as_json(p))
    return tmp_path, p


def _merge(root: Path, *inputs: Path) -> list[str]:
    return ["merge", "--plan", str(root / "plan.json"), *map(str, inputs), "-o", str(root / "m.json")]


def test_merge_plan_relabels_columns_by_kernel(small: tuple[Path, Plan], monkeypatch: pytest.MonkeyPatch) -> None:
    root, p = small
    for cell in p.cells:
        write_cell(root, p, cell.id, agree=cell.kernel != "6.12" or cell.shard != 1)
    monkeypatch.chdir(root)
    assert cli.main(_merge(root)) == 1  # every cell there; one diverges: the run's status
    merged = json.loads((root / "m.json").read_text())
    assert merged["meta"]["versions"] == ["10.0.2 / kernel 6.1", "10.0.2 / kernel 6.12"]
    assert merged["counts"]["agree"] + merged["counts"]["diverge"] == 3 * 2
    assert merged["meta"]["ci"]["missing"] == []


def test_merge_plan_names_a_missing_cell(small: tuple[Path, Plan], capsys: pytest.CaptureFixture[str]) -> None:
    root, p = small
    paths = [write_cell(root, p, c.id) for c in p.cells[1:]]
    assert cli.main(_merge(root, *paths)) == 1
    err = capsys.readouterr().err
    assert f"missing cell {p.cells[0].id}" in err and p.cells[1].id not in err
    assert json.loads((root / "m.json").read_text())["meta"]["ci"]["missing"]


def test_merge_plan_refuses_a_cell_twice(small: tuple[Path, Plan], capsys: pytest.CaptureFixture[str]) -> None:
    root, p = small
    paths = [write_cell(root, p, c.id) for c in p.cells]
    again = write_cell(root, p, p.cells[2].id, name="again.json")
    with pytest.raises(SystemExit) as exc:
        cli.main(_merge(root, *paths, again))
    assert exc.value.code == 2
    assert f"cell {p.cells[2].id} twice" in capsys.readouterr().err
    assert not (root / "m.json").exists()


def test_merge_plan_refuses_foreign_results(small: tuple[Path, Plan], capsys: pytest.CaptureFixture[str]) -> None:
    root, p = small
    plain = root / "plain.json"
    save(Results(meta={"shard": "1/2"}), plain)
    wrong = root / "wrong.json"
    save(Results(meta={"cell": p.cells[0].id, "shard": "2/2"}), wrong)
    for path, message in ((plain, "records no cell"), (wrong, "the plan says 1/2")):
        with pytest.raises(SystemExit):
            cli.main(_merge(root, path))
        assert message in capsys.readouterr().err


def test_report_baseline_lists_what_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def results(kinds: dict[str, str]) -> Results:
        res = Results(meta={"versions": ["10.0.2"]})
        for sid, kind in kinds.items():
            res.outcomes.append(outcome(sid, "qemu"))
            if kind == "skip":
                res.skips.append(Skip(sid, "10.0.2", "no VFIO provider"))
            else:
                res.comparisons.append(Comparison(sid, "10.0.2", kind == "agree", {}))
        return res

    save(results({"a": "agree", "b": "diverge", "c": "agree", "d": "agree"}), tmp_path / "old.json")
    save(results({"a": "diverge", "b": "agree", "c": "skip", "e": "agree"}), tmp_path / "new.json")
    page = tmp_path / "r.html"
    argv = ["report", str(tmp_path / "new.json"), "--baseline", str(tmp_path / "old.json"), "--html", str(page)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for line in ("new divergences: a [10.0.2]", "fixed: b [10.0.2]", "new skips: c [10.0.2]", "new cells: e"):
        assert line in out
    assert "cells no longer run: d [10.0.2]" in out
    text = page.read_text()
    assert "1 new divergences" in text and text.index('id="a"') < text.index('id="b"')  # divergences first


def test_html_links_each_cell_to_its_job(tmp_path: Path) -> None:
    res = Results(outcomes=[outcome("s", "qemu")], comparisons=[Comparison("s", "10.0.2", True, {})])
    res.meta["ci"] = {"cells": {"c1": {"dir": str(tmp_path / "ci-results" / "c1")}}, "items": {"10.0.2": {"s": "c1"}}}
    page: Any = html.render(res, base=tmp_path)
    assert 'href="ci-results/c1/"' in page


def test_run_shard_with_balance_runs_the_plans_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = plan(kernels=[], shards=3)
    out = tmp_path / "r.json"
    argv = ["run", str(SUITE_DIR), "--backend", "reference", "--profile", "10.0", "--quiet", "--json", str(out)]
    cli.main([*argv, "--shard", "2/3", "--balance", "counts", "--cell", "c2"])
    ran = json.loads(out.read_text())
    assert sorted({o["scenario"] for o in ran["outcomes"]}) == p.shard_members[1]
    assert ran["meta"]["balance"] == "counts" and ran["meta"]["cell"] == "c2"
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--balance", "counts"])
    assert exc.value.code == 2 and "--balance applies to --shard" in capsys.readouterr().err
