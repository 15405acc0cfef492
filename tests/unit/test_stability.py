"""``--repeat N`` bookkeeping (harness.stability, the runner, results JSON, console) with fake outcomes, and the
executor's quiescence rule (harness.pair.unsettled). Real QEMU: tests/qemu/test_executor.py."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome, VmState
from contract.scenario import MigrationSpec, Scenario
from contract.versions import Version
from harness.binaries import QemuBinary
from harness.compare import Comparison
from harness.pair import unsettled
from harness.report import console
from harness.results import Results, load, save
from harness.runner import RunOptions, run_sync
from harness.stability import Run, Stability, aggregate, representative, signature
from harness.targets import targets_for_binaries

BIN10 = QemuBinary(path="/fake/qemu-10", version=Version(10, 0, 2), version_text="QEMU emulator version 10.0.2")
ACTIVE = VmState("active", "running")
SETUP = VmState("setup", "inmigrate")
LOADING = VmState("active", "inmigrate")


def refused(destination: VmState, **extra: object) -> Outcome:
    out = Outcome("precheck-running", "qemu", "10.0.2", "refused", stage="migrate",
                  error="There's a migration process in progress", source=ACTIVE, destination=destination)  # fmt: skip
    out.extra.update(extra)
    return out


def agreeing(outcome: Outcome) -> Run:
    return Run(outcome=outcome, comparison=Comparison(outcome.scenario, outcome.qemu_version, True))


def diverging(outcome: Outcome, known_bug: str | None = None) -> Run:
    differences = {"destination.status": ["active", outcome.destination.status if outcome.destination else None]}
    return Run(
        outcome=outcome,
        comparison=Comparison(outcome.scenario, outcome.qemu_version, False, differences, known_bug=known_bug),
    )


# ------------------------------------------------------------------------------------------ aggregation


def test_same_outcome_every_run_is_stable_whatever_the_informative_fields() -> None:
    runs = [agreeing(refused(LOADING, note=f"run {i}", duration=i)) for i in range(3)]
    runs[1].outcome.duration_s = 9.9  # type: ignore[union-attr]
    result = aggregate("precheck-running", "10.0.2", runs)
    assert (result.runs, result.agree, result.diverge, result.error) == (3, 3, 0, 0)
    assert len(result.outcomes) == 1 and result.outcomes[0].count == 3 and result.outcomes[0].agree
    assert result.stable and not result.flaky and result.status == "stable"


def test_two_distinct_real_outcomes_make_the_item_flaky() -> None:
    runs = [agreeing(refused(LOADING)), diverging(refused(SETUP)), agreeing(refused(LOADING))]
    result = aggregate("precheck-running", "10.0.2", runs)
    assert (result.agree, result.diverge) == (2, 1)
    assert [(o.count, o.agree, o.outcome["destination"]["status"]) for o in result.outcomes] == [
        (2, True, "active"),
        (1, False, "setup"),
    ]
    assert result.flaky and not result.stable and result.status == "flaky"


def test_a_run_that_errored_makes_the_item_unstable_and_keeps_the_error() -> None:
    runs = [agreeing(refused(LOADING)), Run(error="MigrationTimeout: timed out")]
    result = aggregate("x", "10.0.2", runs)
    assert (result.runs, result.agree, result.error) == (2, 1, 1)
    assert not result.flaky and not result.stable and result.status == "error"
    assert result.errors == ["MigrationTimeout: timed out"]


def test_always_diverging_is_stable_but_diverges_and_known_bugs_are_counted_apart() -> None:
    result = aggregate("x", "10.0.2", [diverging(refused(SETUP)) for _ in range(2)])
    assert result.stable and result.status == "diverge" and result.diverge == 2
    known = aggregate("x", "10.0.2", [diverging(refused(SETUP), known_bug="QEMU bug") for _ in range(2)])
    assert known.stable and known.status == "stable" and (known.known_bug, known.diverge) == (2, 0)
    assert known.outcomes[0].known_bug


def test_skipped_runs_count_as_skips() -> None:
    skipped = Outcome("x", "qemu", "10.0.2", "skipped", skip_reason="requires KVM")
    result = aggregate("x", "10.0.2", [Run(outcome=skipped), Run(outcome=skipped)])
    assert (result.skip, result.agree, result.status) == (2, 0, "skip")


def test_errors_that_differ_only_in_run_specific_names_are_one_outcome() -> None:
    runs = []
    for node in ("#block291", "#block275"):
        out = refused(LOADING)
        out.error = f"The qcow format used by node '{node}' does not support live migration"
        runs.append(agreeing(out))
    result = aggregate("blocker-blockdev-add-during-migration", "10.0.2", runs)
    assert result.stable and len(result.outcomes) == 1 and result.outcomes[0].count == 2


def test_signature_keeps_what_is_compared_only() -> None:
    out = refused(LOADING)
    out.guest = {"alive": True, "pages_checked": 123, "bad_pages": 0, "first_bad": None}
    out.events = {"source": ["setup", "active"], "destination": []}
    sig = signature(out)
    assert sig["guest"] == {"alive": True, "bad_pages": 0}
    assert sig["events"] == {"source": ["setup", "active"]}
    assert "duration_s" not in sig and "extra" not in sig and "binary" not in sig


def test_representative_is_the_first_divergence_else_the_first_run() -> None:
    first, second = agreeing(refused(LOADING)), diverging(refused(SETUP))
    assert representative([first, second]) is second
    assert representative([first, agreeing(refused(LOADING))]) is first
    known = diverging(refused(SETUP), known_bug="bug")
    assert representative([first, known]) is known
    assert representative([Run(error="boom")]) is None


def test_stability_round_trips_through_the_results_file(tmp_path: Path) -> None:
    runs = [agreeing(refused(LOADING)), diverging(refused(SETUP)), Run(error="boom")]
    results = Results(stability=[aggregate("precheck-running", "10.0.2", runs)])
    assert [s.scenario for s in results.unstable] == ["precheck-running"] and not results.passed
    save(results, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    entry = data["stability"][0]
    assert (entry["runs"], entry["agree"], entry["diverge"], entry["error"], entry["stable"]) == (3, 1, 1, 1, False)
    assert entry["status"] == "error" and entry["errors"] == ["boom"] and len(entry["outcomes"]) == 2
    again = load(tmp_path / "r.json")
    assert again.stability[0].to_json() == results.stability[0].to_json()
    # a single run writes no stability section at all (the file format is unchanged)
    assert "stability" not in Results().to_json()


def test_console_lists_every_item_and_spells_out_the_unstable_ones() -> None:
    stable = aggregate("a", "10.0.2", [agreeing(refused(LOADING)) for _ in range(2)])
    flaky = aggregate("b", "10.0.2", [agreeing(refused(LOADING)), diverging(refused(SETUP))])
    lines = console.render_stability([stable, flaky])
    text = "\n".join(lines)
    assert "stability over 2 runs per item" in text
    row_a = next(line for line in lines if line.startswith("a "))
    row_b = next(line for line in lines if line.startswith("b "))
    assert row_a.split()[-1] == "stable" and row_b.split()[-1] == "FLAKY"
    assert "UNSTABLE b [10.0.2]: 2 distinct outcomes" in text
    assert "1x (diverges): " in text and "destination=setup/inmigrate" in text
    assert lines[-1] == "stability: 1 stable, 1 unstable of 2 items"


# ------------------------------------------------------------------------------------------ the runner


class AlternatingQemu:
    """A real side that answers each scenario with the next of ``answers`` (cycling); the model predicts the
    settled outcome. Counts calls, so the test can see N real runs and one prediction per item."""

    def __init__(self, answers: dict[str, list[VmState | Exception]]) -> None:
        self.cycles = {sid: itertools.cycle(seq) for sid, seq in answers.items()}
        self.executions: dict[str, int] = {}
        self.predictions: dict[str, int] = {}

    async def execute(self, s: Scenario, binary: QemuBinary, *, workdir: Path, allocator: object = None,
                      timeout: float = 60.0) -> Outcome:  # fmt: skip
        self.executions[s.id] = self.executions.get(s.id, 0) + 1
        answer = next(self.cycles[s.id])
        if isinstance(answer, Exception):
            raise answer
        out = refused(answer)
        out.scenario, out.accel = s.id, "tcg"
        return out

    def predict(self, s: Scenario, version: Version, host: HostFacts) -> Outcome:
        self.predictions[s.id] = self.predictions.get(s.id, 0) + 1
        out = refused(LOADING)
        out.scenario, out.backend, out.qemu_version = s.id, "reference", "10.0"
        return out

    def host_facts(self, binary: QemuBinary, accel: str) -> HostFacts:
        return HostFacts()


def run_repeated(fake: AlternatingQemu, repeat: int) -> Results:
    scenarios = [Scenario(id=sid, migration=MigrationSpec()) for sid in fake.cycles]
    options = RunOptions(execute=fake.execute, predict=fake.predict, host_facts=fake.host_facts, jobs=2,
                         repeat=repeat)  # fmt: skip
    return run_sync(scenarios, targets_for_binaries([BIN10]), options)


def test_repeat_runs_qemu_n_times_and_the_model_once() -> None:
    fake = AlternatingQemu({"steady": [LOADING], "racy": [LOADING, SETUP]})
    res = run_repeated(fake, 4)
    assert fake.executions == {"steady": 4, "racy": 4} and fake.predictions == {"steady": 1, "racy": 1}
    by_id = {s.scenario: s for s in res.stability}
    assert by_id["steady"].stable and (by_id["steady"].agree, by_id["steady"].runs) == (4, 4)
    assert by_id["racy"].flaky and (by_id["racy"].agree, by_id["racy"].diverge) == (2, 2)
    # one comparison and one real outcome per item; the racy item's is the run that diverged
    assert sorted(c.scenario for c in res.comparisons) == ["racy", "steady"]
    racy = next(c for c in res.comparisons if c.scenario == "racy")
    assert not racy.agree and racy.differences["destination.status"] == ["active", "setup"]
    assert sorted(o.scenario for o in res.outcomes if o.backend == "qemu") == ["racy", "steady"]
    assert not res.passed


def test_repeat_with_every_run_alike_passes() -> None:
    res = run_repeated(AlternatingQemu({"steady": [LOADING]}), 3)
    assert res.passed and [s.status for s in res.stability] == ["stable"]


def test_repeat_where_one_run_errors_fails_but_keeps_the_comparison() -> None:
    fake = AlternatingQemu({"crashy": [LOADING, RuntimeError("executor crashed")]})
    res = run_repeated(fake, 2)
    (item,) = res.stability
    assert (item.agree, item.error) == (1, 1) and "executor crashed" in item.errors[0]
    assert [c.agree for c in res.comparisons] == [True] and res.errors == [] and not res.passed


def test_single_run_has_no_stability_section() -> None:
    res = run_repeated(AlternatingQemu({"racy": [LOADING, SETUP]}), 1)
    assert res.stability == [] and res.passed


def test_cli_repeat_flag_reaches_the_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness import cli
    from harness.commands import run as run_command

    seen: list[RunOptions] = []

    def fake_run_sync(scenarios: object, targets: object, options: RunOptions) -> Results:
        seen.append(options)
        return Results(stability=[Stability("x", "10.0.2", runs=2, agree=1, error=1, errors=["boom"])])

    monkeypatch.setattr(run_command, "run_sync", fake_run_sync)
    monkeypatch.setattr(run_command, "_targets", lambda args: [])
    path = tmp_path / "x.toml"
    path.write_text("[migration]\n")
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert cli.main(["run", str(path), "--repeat", "2", "--quiet"]) == 1  # an unstable item fails the run
    assert seen[-1].repeat == 2 and seen[-1].meta["repeat"] == 2


# ------------------------------------------------------------------------------------------ quiescence


@pytest.mark.parametrize(
    ("source", "destination", "incoming", "why"),
    [
        # the precheck-running race: the source is connected, the destination has not accepted yet
        (ACTIVE, SETUP, True, "the destination has not started its incoming migration (source active)"),
        (ACTIVE, VmState("none", "inmigrate"), True, "the destination has not started"),  # 7.2 shows none
        (VmState("cancelling", "running"), LOADING, True, "the source is in cancelling"),
        (VmState("device", "finish-migrate"), LOADING, True, "the source is in device"),
        (VmState("completed", "finish-migrate"), LOADING, True, "the source is in runstate finish-migrate"),
        (VmState("completed", "postmigrate"), LOADING, True, "the destination is in active after the source"),
        (VmState("setup", "running"), SETUP, True, "the source is in setup"),
        (VmState("cancelled", "running"), LOADING, True, "the destination is still loading after the source"),
    ],
)
def test_transient_states_are_not_quiescent(source: VmState, destination: VmState, incoming: bool, why: str) -> None:
    reason = unsettled(source, destination, incoming=incoming)
    assert reason is not None and reason.startswith(why)


@pytest.mark.parametrize(
    ("source", "destination", "incoming"),
    [
        (ACTIVE, LOADING, True),  # a throttled migration in flight
        (VmState("none", "running"), SETUP, True),  # migrate refused: nobody will ever connect
        (VmState("failed", "running"), SETUP, True),  # a connect that failed proves nothing
        (VmState("pre-switchover", "finish-migrate"), LOADING, True),  # parked until migrate-continue
        (VmState("completed", "postmigrate"), VmState("completed", "running"), True),
        (VmState("completed", "postmigrate"), VmState("none", "inmigrate"), False),  # file: not loaded yet
        (VmState("completed", "postmigrate"), None, True),  # a destination that died
        (None, None, True),
    ],
)
def test_settled_states_are_quiescent(source: VmState | None, destination: VmState | None, incoming: bool) -> None:
    assert unsettled(source, destination, incoming=incoming) is None
