"""Results files: the contract's JSON round-trips, atomic writes, and merging shards."""

from __future__ import annotations

import json
from pathlib import Path

from contract.outcome import Outcome, VmState
from harness.compare import Comparison, compare
from harness.results import ErrorRecord, Results, Skip, WorkItem, load, merge, save, write_atomic


def pair(scenario: str, version: str, agree: bool = True) -> tuple[list[Outcome], Comparison]:
    outs = [
        Outcome(scenario, backend, version, "completed", source=VmState("completed", "postmigrate"))
        for backend in ("qemu", "reference")
    ]
    diffs = {} if agree else {"verdict": ["refused", "completed"]}
    return outs, Comparison(scenario, version, agree, diffs)


def results_with(*items: tuple[str, str, bool]) -> Results:
    res = Results(meta={"versions": sorted({v for _, v, _ in items}), "start": "2026-01-01T00:00:00+00:00"})
    for scenario, version, agree in items:
        outs, comp = pair(scenario, version, agree)
        res.outcomes += outs
        res.comparisons.append(comp)
    return res


def test_contract_keys_round_trip(tmp_path: Path) -> None:
    res = results_with(("a", "10.0.2", True), ("b", "10.0.2", False))
    res.errors.append(ErrorRecord("c", "10.0.2", "qemu", "RuntimeError: x"))
    res.skips.append(Skip("d", "10.0.2", "qemu: requires vfio"))
    res.not_run.append(WorkItem("e", "10.0.2"))
    path = tmp_path / "r.json"
    save(res, path)
    data = json.loads(path.read_text())
    assert set(data) >= {"outcomes", "comparisons", "meta", "not_run"}
    assert data["comparisons"][1] == {
        "scenario": "b",
        "qemu_version": "10.0.2",
        "agree": False,
        "differences": {"verdict": ["refused", "completed"]},
    }
    assert set(data["outcomes"][0]) == {
        "scenario", "backend", "qemu_version", "verdict", "stage", "error", "source", "destination", "skip_reason",
    }  # fmt: skip
    back = load(path)
    assert back.to_json() == res.to_json()
    assert back.counts() == {
        "agree": 1, "diverge": 1, "known_bug": 0, "skip": 1, "error": 1, "environment": 0, "not_run": 1,
    }  # fmt: skip
    assert not back.passed


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]
    assert target.stat().st_mode & 0o044 == 0o044 & ~_umask()  # readable like any file the user creates


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_merge_joins_shards_and_clears_not_run() -> None:
    shard1 = results_with(("a", "10.0.2", True))
    shard1.not_run = [WorkItem("b", "10.0.2")]
    shard2 = results_with(("b", "10.0.2", False))
    shard2.meta["start"] = "2026-01-01T00:00:05+00:00"
    merged = merge([shard1, shard2])
    assert sorted(c.scenario for c in merged.comparisons) == ["a", "b"]
    assert merged.not_run == []
    assert len(merged.outcomes) == 4
    assert merged.meta["start"] == "2026-01-01T00:00:00+00:00"
    assert merged.meta["versions"] == ["10.0.2"]


def test_merge_later_part_replaces_the_same_item() -> None:
    old = results_with(("a", "10.0.2", False))
    old.errors.append(ErrorRecord("a", "10.0.2", "qemu", "boom"))
    new = results_with(("a", "10.0.2", True))
    merged = merge([old, new])
    assert [c.agree for c in merged.comparisons] == [True]
    assert merged.errors == []
    assert merged.passed


def test_merge_keeps_not_run_that_nobody_ran() -> None:
    part = results_with(("a", "7.2.22", True))
    part.not_run = [WorkItem("z", "7.2.22")]
    merged = merge([part, results_with(("a", "10.0.2", True))])
    assert merged.not_run == [WorkItem("z", "7.2.22")]
    assert merged.meta["versions"] == ["7.2.22", "10.0.2"]


def test_select_one_cell() -> None:
    res = results_with(("a", "10.0.2", True), ("a", "7.2.22", False), ("b", "10.0.2", True))
    res.skips.append(Skip("a", "10.0.2", "why"))
    part = res.select("a", "10.0.2")
    assert [(o.scenario, o.qemu_version) for o in part.outcomes] == [("a", "10.0.2")] * 2
    assert [c.agree for c in part.comparisons] == [True] and [s.reason for s in part.skips] == ["why"]


def test_error_kinds_round_trip_and_old_files_read_as_harness_errors(tmp_path: Path) -> None:
    res = Results()
    res.errors.append(ErrorRecord("a", "10.0.2", "qemu", "RuntimeError: x"))
    res.errors.append(ErrorRecord("b", "10.0.2", "qemu", "HostEnvironmentError: ENOMEM", kind="environment",
                                   logs="/r/logs/b__10.0.2"))  # fmt: skip
    path = tmp_path / "r.json"
    save(res, path)
    data = json.loads(path.read_text())
    assert data["errors"][0] == {"scenario": "a", "column": "10.0.2", "backend": "qemu", "error": "RuntimeError: x",
                                 "kind": "harness"}  # fmt: skip
    assert data["errors"][1]["kind"] == "environment" and data["errors"][1]["logs"] == "/r/logs/b__10.0.2"
    assert data["counts"]["error"] == 1 and data["counts"]["environment"] == 1
    assert load(path).to_json() == res.to_json()
    del data["errors"][1]["kind"]  # a file written before kinds existed
    assert ErrorRecord.from_json(data["errors"][1]).kind == "harness"


def test_outcome_logs_is_an_optional_extension() -> None:
    outcome = Outcome("a", "qemu", "10.0.2", "failed", stage="migration", error="x")
    assert "logs" not in outcome.to_json()
    outcome.logs = "/r/logs/a__10.0.2"
    assert outcome.to_json()["logs"] == "/r/logs/a__10.0.2"
    assert Outcome.from_json(outcome.to_json()).logs == "/r/logs/a__10.0.2"


def test_exit_status_1_beats_3_beats_0() -> None:
    env = ErrorRecord("a", "10.0.2", "qemu", "ENOSPC", kind="environment")
    res = Results()
    assert res.exit_status == 0
    res.errors.append(env)
    assert res.exit_status == 3 and not res.passed
    res.not_run.append(WorkItem("z", "10.0.2"))
    assert res.exit_status == 1
    res.not_run.clear()
    res.errors.append(ErrorRecord("b", "10.0.2", "reference", "RuntimeError"))
    assert res.exit_status == 1
    res.errors = [env]
    ref = Outcome("c", "reference", "10.0.2", "completed")
    res.comparisons.append(compare(ref, Outcome("c", "qemu", "10.0.2", "refused", stage="migrate", error="no")))
    assert res.exit_status == 1
