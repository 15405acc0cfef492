"""Cross-version items: the scenario keys, which pairs a run holds, the runner's calls and the JSON
(fake backends; real QEMU: tests/qemu/test_cross_versions.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome, VmState
from contract.scenario import MigrationSpec, Scenario, VmSpec
from contract.versions import Version
from harness import cli, qemu_pin, run_pairs
from harness.binaries import QemuBinary
from harness.commands import run as run_command
from harness.cross_targets import PairPlan, cross_target, every_ordered_pair, plan_items
from harness.loader import load_scenario
from harness.results import HOST_SKIP, Results
from harness.runner import RunOptions, run_sync
from harness.scenario_error import ScenarioError
from harness.targets import target_for_profile, targets_for_binaries
from reference_impl.predict import predict

BIN7 = QemuBinary(path="/fake/qemu-7", version=Version(7, 2, 22), version_text="7.2.22")
BIN10 = QemuBinary(path="/fake/qemu-10", version=Version(10, 0, 2), version_text="10.0.2")
BIN102 = QemuBinary(path="/fake/qemu-102", version=Version(10, 2, 2), version_text="10.2.2")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _no_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins resolve against the fakes only; the versions an error lists are fixed."""
    monkeypatch.setattr(run_pairs, "_discovered", lambda: [])
    monkeypatch.setattr(qemu_pin, "found_versions", lambda: "7.2.22, 10.0.2")


# ---- the scenario keys ------------------------------------------------------------------------------
def test_source_and_destination_take_a_qemu_version(tmp_path: Path) -> None:
    path = _write(tmp_path, "x", '[source]\nqemu = "7.2"\n[destination]\nqemu = "10.0.2"\n')
    scenario = load_scenario(path)
    assert (scenario.source.qemu, scenario.destination.qemu) == ("7.2", "10.0.2")


def test_a_path_is_made_absolute_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "qemu").write_text("")
    scenario = load_scenario(_write(tmp_path, "x", '[destination]\nqemu = "./bin/qemu"\n'))
    assert scenario.destination.qemu == str(tmp_path / "bin" / "qemu") and scenario.source.qemu is None


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[source]\nqemu = "seven"\n', "source.qemu", "'seven' is not a version prefix"),
        ('[destination]\nqemu = "10,0"\n', "destination.qemu", "'10,0' is not a version prefix"),
        ('[source]\nqemu = "./nowhere/qemu"\n', "source.qemu", "no such file"),
        ("[source]\nqemu = 7.2\n", "source.qemu", "expected a string"),
        ('[vm]\nqemu = "7.2"\n', "vm.qemu", "unknown key"),
    ],
)
def test_a_bad_qemu_value_names_file_key_and_versions(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = _write(tmp_path, "bad", text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.key == key and problem in str(info.value) and str(path) in str(info.value)
    if problem != "unknown key" and "expected" not in problem:
        assert "QEMU versions found here: 7.2.22, 10.0.2" in str(info.value)


# ---- which pairs a run holds ------------------------------------------------------------------------
def _columns(items: list[tuple[Scenario, Any]]) -> list[tuple[str, str]]:
    return [(s.id, t.column) for s, t in items]


def test_a_plain_run_pairs_each_binary_with_itself() -> None:
    targets = targets_for_binaries([BIN7, BIN10])
    items = plan_items([Scenario("a")], PairPlan(pairs=[(t, t) for t in targets], pool=targets))
    assert [t for _, t in items] == targets  # the very targets of before: same columns, no destination


def test_cross_is_every_ordered_pair_of_distinct_versions() -> None:
    targets = targets_for_binaries([BIN7, BIN10, BIN102])
    items = plan_items([Scenario("a")], PairPlan(pairs=every_ordered_pair(targets), cross=True, pool=targets))
    assert sorted(t.column for _, t in items) == sorted(
        f"{a}->{b}" for a in ("7.2.22", "10.0.2", "10.2.2") for b in ("7.2.22", "10.0.2", "10.2.2") if a != b
    )
    seven_to_ten = next(t for _, t in items if t.column == "7.2.22->10.0.2")
    assert (seven_to_ten.binary, seven_to_ten.destination_binary) == (BIN7, BIN10)
    assert seven_to_ten.destination_version == Version(10, 0, 2) and seven_to_ten.cross


def test_pins_override_their_side_and_collapse_duplicates() -> None:
    targets = targets_for_binaries([BIN7, BIN10, BIN102])
    both = Scenario("both", source=VmSpec(qemu="10.0"), destination=VmSpec(qemu="7.2"))
    one = Scenario("one", source=VmSpec(qemu="7.2"))
    plain = PairPlan(pairs=[(t, t) for t in targets], pool=targets)
    assert _columns(plan_items([both, one], plain)) == [
        ("both", "10.0.2->7.2.22"),
        ("one", "7.2.22"),  # pinned source on the run's own 7.2: one version, which the scenario asked for
        ("one", "7.2.22->10.0.2"),
        ("one", "7.2.22->10.2.2"),
    ]
    cross = PairPlan(pairs=every_ordered_pair(targets), cross=True, pool=targets)
    assert _columns(plan_items([one], cross)) == [("one", "7.2.22->10.0.2"), ("one", "7.2.22->10.2.2")]
    same = Scenario("same", source=VmSpec(qemu="10.0"), destination=VmSpec(qemu="10.0"))
    assert _columns(plan_items([same], cross)) == [("same", "10.0.2")]  # both pinned: kept under --cross


def test_a_pin_this_run_lacks_is_a_skip_naming_it() -> None:
    targets = targets_for_binaries([BIN10])
    pinned = Scenario("p", source=VmSpec(qemu="7.2"))
    (item,) = plan_items([pinned], PairPlan(pairs=[(t, t) for t in targets], pool=targets, more=lambda: []))
    target = item[1]
    assert target.column == "7.2->10.0.2" and target.binary is None
    assert target.missing == "[source] qemu = '7.2': no QEMU 7.2 found (found: 10.0.2)"


def test_cross_target_of_one_target_is_that_target() -> None:
    (target,) = targets_for_binaries([BIN10])
    assert cross_target(target, target) is target


# ---- the runner's calls -----------------------------------------------------------------------------
class CrossFakes:
    def __init__(self) -> None:
        self.executed: list[tuple[str, str | None]] = []
        self.predicted: list[tuple[str, str | None]] = []

    async def execute(self, s: Scenario, binary: QemuBinary, *, workdir: Path, allocator: object = None,
                      timeout: float = 60.0, destination_binary: QemuBinary | None = None) -> Outcome:  # fmt: skip
        dest = None if destination_binary is None else str(destination_binary.version)
        self.executed.append((str(binary.version), dest))
        out = Outcome(s.id, "qemu", str(binary.version), "completed", source=VmState("completed", "postmigrate"),
                      destination=VmState("completed", "running"), destination_qemu_version=dest)  # fmt: skip
        out.accel = "tcg"
        return out

    def predict(self, s: Scenario, version: Version, host: HostFacts, *destination: Version) -> Outcome:
        self.predicted.append((str(version), str(destination[0]) if destination else None))
        return Outcome(s.id, "reference", version.short, "completed", source=VmState("completed", "postmigrate"),
                       destination=VmState("completed", "running"))  # fmt: skip

    def options(self, **kw: Any) -> RunOptions:
        return RunOptions(execute=self.execute, predict=self.predict, host_facts=lambda b, a: HostFacts(), **kw)


def test_the_runner_hands_both_versions_to_both_backends(tmp_path: Path) -> None:
    fakes = CrossFakes()
    targets = targets_for_binaries([BIN7, BIN10])
    items = plan_items([Scenario("a", migration=MigrationSpec())], PairPlan(every_ordered_pair(targets), True, targets))
    res = run_sync([items[0][0]], targets, fakes.options(jobs=1, logs_dir=tmp_path), items)
    assert sorted(fakes.executed) == [("10.0.2", "7.2.22"), ("7.2.22", "10.0.2")]
    assert sorted(fakes.predicted) == [("10.0.2", "7.2.22"), ("7.2.22", "10.0.2")]
    assert res.counts()["agree"] == 2 and res.meta["cross"]["7.2.22->10.0.2"] == ["7.2.22", "10.0.2"]
    for outcome in res.outcomes:
        assert outcome.destination_qemu_version in ("7.2.22", "10.0.2") != outcome.qemu_version
        assert outcome.extra["column"] == f"{outcome.qemu_version}->{outcome.destination_qemu_version}"
    again = Results.from_json(json.loads(json.dumps(res.to_json())))
    assert {(c.scenario, c.column) for c in again.comparisons} == {("a", "7.2.22->10.0.2"), ("a", "10.0.2->7.2.22")}


def test_a_missing_pin_is_a_host_skip_and_runs_nothing(tmp_path: Path) -> None:
    fakes = CrossFakes()
    targets = targets_for_binaries([BIN10])
    pinned = Scenario("p", source=VmSpec(qemu="7.2"))
    items = plan_items([pinned], PairPlan([(t, t) for t in targets], pool=targets, more=lambda: []))
    res = run_sync([pinned], targets, fakes.options(jobs=1, logs_dir=tmp_path), items)
    assert fakes.executed == [] and fakes.predicted == []
    (skip,) = res.skips
    assert (skip.column, skip.kind) == ("7.2->10.0.2", HOST_SKIP) and "no QEMU 7.2 found" in skip.reason


def test_same_version_items_call_the_backends_as_before(tmp_path: Path) -> None:
    fakes = CrossFakes()
    res = run_sync([Scenario("a")], targets_for_binaries([BIN10]), fakes.options(jobs=1, logs_dir=tmp_path))
    assert fakes.executed == [("10.0.2", None)] and fakes.predicted == [("10.0.2", None)]
    assert all("destination_qemu_version" not in o.to_json() for o in res.outcomes)


# ---- the command line -------------------------------------------------------------------------------
def _fake_backends(monkeypatch: pytest.MonkeyPatch, binaries: list[QemuBinary]) -> None:
    """The CLI's run with these binaries and CrossFakes' backends."""
    fakes = CrossFakes()
    monkeypatch.setattr(run_command, "qemu_binaries", lambda paths: binaries)
    real_options = run_command.RunOptions

    def options(**kw: Any) -> RunOptions:
        options = real_options(**kw)
        options.execute, options.predict, options.host_facts = fakes.execute, fakes.predict, lambda b, a: HostFacts()
        return options

    monkeypatch.setattr(run_command, "RunOptions", options)


def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    _fake_backends(monkeypatch, [BIN7, BIN10, BIN102])
    path = _write(tmp_path, "s", "[migration]\n")
    out = tmp_path / "r.json"
    status = cli.main(["run", str(path), "--quiet", "--json", str(out), "--keep-logs", "none", *args])
    return status, json.loads(out.read_text()) if out.exists() else {}


def test_cli_cross_and_pair(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    status, data = _cli(monkeypatch, tmp_path, "--cross")
    assert status == 0 and len(data["comparisons"]) == 6
    status, data = _cli(monkeypatch, tmp_path, "--pair", "7.2:10.0", "--pair", "10.0:7.2")
    assert status == 0 and sorted(c["column"] for c in data["comparisons"]) == ["10.0.2->7.2.22", "7.2.22->10.0.2"]


def test_cli_pair_naming_an_absent_version_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _cli(monkeypatch, tmp_path, "--pair", "7.2:9.0")
    assert info.value.code == 2 and "--pair 7.2:9.0: no QEMU 9.0 in this run" in capsys.readouterr().err


@pytest.mark.parametrize("binaries", [[BIN7, BIN10], [BIN10]], ids=["two versions", "one version"])
def test_conformance_adds_the_cross_set_only_with_two_versions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, binaries: list[QemuBinary]
) -> None:
    suite = tmp_path / "suite"
    (suite / "cross").mkdir(parents=True)
    _write(suite, "plain", "[migration]\n")
    _write(suite / "cross", "pinned", '[source]\nqemu = "10.0"\n[destination]\nqemu = "7.2"\n')
    _write(suite / "cross", "free", "[migration]\n")
    monkeypatch.setenv("MIGCONFORM_SUITE", str(suite))
    _fake_backends(monkeypatch, binaries)
    assert cli.main(["conformance", "--quiet", "--results-dir", str(tmp_path / "out"), "--keep-logs", "none"]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    items = sorted((c["scenario"], c.get("column") or c["qemu_version"]) for c in data["comparisons"])
    plain = [("plain", str(b.version)) for b in binaries]
    if len(binaries) == 1:
        assert items == plain  # the same-version suite alone, as before
    else:
        cross = [("free", "10.0.2->7.2.22"), ("free", "7.2.22->10.0.2"), ("pinned", "10.0.2->7.2.22")]
        assert items == sorted(plain + cross)


def test_cross_of_profiles_runs_the_cross_rules() -> None:
    """The default scenario (q35, tcp) across versions: the q35 aliases differ, the destination refuses the
    configuration section, and the source's socket error is a race (reference_impl.cross)."""
    targets = [target_for_profile("7.2"), target_for_profile("10.0")]
    items = plan_items([Scenario("a")], PairPlan(every_ordered_pair(targets), True, targets))
    res = run_sync([Scenario("a")], targets, RunOptions(backend="reference", jobs=1), items)
    assert [o.not_modelled for o in res.outcomes] == [
        "the source's error when the destination refuses the configuration section over tcp/unix"
    ] * 2


# ---- the model entry and the JSON -------------------------------------------------------------------
def test_predict_without_a_destination_version_is_the_same_version_prediction() -> None:
    scenario = Scenario("a", migration=MigrationSpec())
    plain = predict(scenario, "10.0.2", HostFacts())
    assert predict(scenario, "10.0.2", HostFacts(), None).to_json() == plain.to_json()
    same_profile = predict(scenario, "10.0.2", HostFacts(), "10.0.1").to_json()
    assert same_profile.pop("destination_qemu_version") == "10.0.1" and same_profile == plain.to_json()


def test_outcome_json_round_trip_with_and_without_the_destination_version() -> None:
    old = {"scenario": "a", "backend": "qemu", "qemu_version": "10.0.2", "verdict": "completed"}
    loaded = Outcome.from_json(old)
    assert loaded.destination_qemu_version is None and "destination_qemu_version" not in loaded.to_json()
    cross = Outcome("a", "qemu", "7.2.22", "completed", destination_qemu_version="10.0.2")
    assert Outcome.from_json(json.loads(json.dumps(cross.to_json()))) == cross
    assert cross.to_json()["destination_qemu_version"] == "10.0.2"
