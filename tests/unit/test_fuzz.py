"""The fuzzer's pure logic (harness.fuzz): step generation, the scenario files it writes, and the session's
search, shrink and bookkeeping against a fake lockstep runner (no QEMU: tests/qemu/test_fuzz.py runs real ones)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.scenario import Step
from contract.versions import Version
from harness.compare import Comparison
from harness.fuzz.command import duration, fuzz_meta
from harness.fuzz.lockstep import Check
from harness.fuzz.session import FuzzSession
from harness.fuzz.toml_out import FoundFileError, scenario_text, toml_value, write_found
from harness.fuzz.vocabulary import FUZZ_VM, MAX_STEPS, PARAMETER_VALUES, Vocabulary, step_strategies
from harness.loader import load_scenario
from harness.targets import Target

VOCAB = Vocabulary(
    capabilities=("events", "multifd", "postcopy-ram", "pause-before-switchover"),
    parameters=("max-bandwidth", "multifd-channels", "downtime-limit", "not-in-the-table"),
)


def any_step(vocab: Vocabulary = VOCAB) -> st.SearchStrategy[Step]:
    return st.one_of(list(step_strategies(vocab).values()))


@settings(max_examples=300, deadline=None)
@given(any_step())
def test_generated_steps_use_the_binary_vocabulary(step: Step) -> None:
    assert set(step.capabilities) <= set(VOCAB.capabilities)
    assert set(step.parameters) <= set(VOCAB.parameters) & set(PARAMETER_VALUES)
    for name, value in step.parameters.items():
        assert value in PARAMETER_VALUES[name]
    if step.action in ("start-postcopy", "cancel", "wait", "migrate-continue"):
        assert step.side == "source"
    if step.action == "migrate":
        assert step.side != "both" and step.transport is not None
    if step.action == "qmp":
        assert step.command


def test_every_action_has_a_rule_and_actions_limit_them() -> None:
    assert set(step_strategies(VOCAB)) == set(VOCAB.actions)
    narrow = Vocabulary(VOCAB.capabilities, VOCAB.parameters, actions=("stop", "cont"))
    assert set(step_strategies(narrow)) == {"stop", "cont"}
    bare = Vocabulary((), ())
    assert "set-capabilities" not in step_strategies(bare) and "set-parameters" not in step_strategies(bare)


@settings(max_examples=40, deadline=None)
@given(st.lists(any_step(), max_size=MAX_STEPS))
def test_any_generated_sequence_writes_a_file_the_loader_reads_back(
    tmp_path_factory: pytest.TempPathFactory, steps: list[Step]
) -> None:
    path = tmp_path_factory.mktemp("found") / "fuzz-x.toml"
    text = scenario_text("fuzz-x", "d", FUZZ_VM, steps, ["QEMU: verdict=refused", "model: verdict=completed"])
    write_found(path, text, steps)
    loaded = load_scenario(path)
    assert loaded.steps == tuple(steps)
    assert loaded.source == FUZZ_VM and loaded.destination == FUZZ_VM
    assert text.startswith("# QEMU: verdict=refused\n# model: verdict=completed\n")


def test_toml_values_nest_and_quote() -> None:
    value = {"id": "vd0", "backend": {"type": "qemu-vdagent", "data": {}}, "odd key": 'a"b', "n": [1, True]}
    assert toml_value(value) == (
        '{ id = "vd0", backend = { type = "qemu-vdagent", data = {} }, "odd key" = "a\\"b", n = [1, true] }'
    )


def test_a_file_that_loads_to_other_steps_is_refused(tmp_path: Path) -> None:
    text = scenario_text("fuzz-y", "d", FUZZ_VM, [Step("stop")])
    with pytest.raises(FoundFileError):
        write_found(tmp_path / "fuzz-y.toml", text, [Step("cont")])
    assert not (tmp_path / "fuzz-y.toml").exists()


class FakeRunner:
    """Stands in for LockstepRunner: a sequence diverges as soon as it holds a ``stop`` (a planted gap)."""

    def __init__(self) -> None:
        self.target = Target(column="10.0.2", version=Version.parse("10.0.2"))
        self.vm = FUZZ_VM
        self.runs = 0
        self.cached = 0
        self.run_seconds = 0.0

    def check(self, steps: Sequence[Step], *, fresh: bool = False) -> Check:
        self.runs += 1
        if any(s.action == "stop" for s in steps):
            comparison = Comparison("fuzz", "10.0.2", False, {"error": ["planted", None]})
            return Check("diverge", 0.0, comparison)
        if steps[-1].action == "qmp" and steps[-1].command == "migrate-pause":
            return Check("not-modelled", 0.0, detail="not modelled: QMP command 'migrate-pause'")
        return Check("agree", 0.0)


def fake_session(runner: FakeRunner, vocab: Vocabulary, tmp_path: Path, budget_s: float, seed: int) -> FuzzSession:
    return FuzzSession(
        runner,  # type: ignore[arg-type]
        vocab,
        budget_s=budget_s,
        seed=seed,
        found_dir=tmp_path / "found",
        db_dir=tmp_path / "db",
        max_examples=300,
    )


def test_session_finds_shrinks_and_writes_the_planted_gap(tmp_path: Path) -> None:
    runner = FakeRunner()
    session = fake_session(runner, VOCAB, tmp_path, 5.0, 5)
    session.run()
    summary = session.summary()
    assert summary["steps"] > 0 and summary["sequences"] > 0
    (finding,) = session.findings.values()
    (step,) = finding.steps  # shrunk to the one planted step
    assert step.action == "stop"
    assert finding.path is not None and load_scenario(finding.path).steps == (step,)
    assert "seed 5" in finding.path.read_text()
    (divergence,) = summary["divergences"]
    assert divergence["steps"] == 1 and divergence["file"] == str(finding.path)
    meta = fuzz_meta([summary], 5, 1, 60.0)
    assert meta["total"]["divergences"] == 1 and meta["seeds"] == [5]


def test_budget_durations() -> None:
    assert duration("90") == 90.0 and duration("60s") == 60.0 and duration("10m") == 600.0 and duration("1h") == 3600
    import argparse

    for bad in ("", "0", "ten", "5d", "-1m"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)


def test_the_html_report_shows_a_fuzz_section_only_for_fuzz_results() -> None:
    from harness.report import html
    from harness.results import Results

    assert "fuzz (seeds" not in html.render(Results())
    worker = {"divergences": [{"file": "results/fuzz/found/fuzz-10.0.2-abc.toml", "steps": 2}]}
    meta = {"fuzz": {"seeds": [1], "workers": [worker], "total": {"steps": 120, "divergences": 1}}}
    page = html.render(Results(meta=meta))
    assert "fuzz (seeds 1)" in page and "120 steps" in page and "fuzz-10.0.2-abc.toml</code> (2 steps)" in page


class RacingRunner(FakeRunner):
    """A migrate leaves a prefix "racing" (a migration at full speed, reference_impl.timing) until a wait; every
    step drawn in between is recorded, and a cancel diverges on the first run only (a race)."""

    def __init__(self) -> None:
        super().__init__()
        self.after_racing: list[str] = []
        self.cancels = 0

    def check(self, steps: Sequence[Step], *, fresh: bool = False) -> Check:
        self.runs += 1
        racing = False
        for step in steps[:-1]:
            racing = (racing or step.action == "migrate") and step.action != "wait"
        if racing:
            self.after_racing.append(steps[-1].action)
        if steps[-1].action == "cancel":
            self.cancels += 1
            first = self.cancels % 2 == 1
            comparison = Comparison("fuzz", "10.0.2", False, {"verdict": ["completed", "failed" if first else "x"]})
            return Check("diverge", 0.0, comparison)
        if steps[-1].action == "migrate" or (racing and steps[-1].action != "wait"):
            return Check("racing", 0.0, detail="not modelled: the final states while a migration runs at full speed")
        return Check("agree", 0.0)


def test_a_racing_prefix_goes_on_only_with_a_wait_and_a_race_is_recorded_as_unstable(tmp_path: Path) -> None:
    vocab = Vocabulary((), ("max-bandwidth",), actions=("migrate", "wait", "stop", "cancel"))
    runner = RacingRunner()
    session = fake_session(runner, vocab, tmp_path, 3.0, 3)
    session.run()
    summary = session.summary()
    assert summary["racing"] > 0
    # After a racing prefix the machine draws only wait: the model follows no other step there.
    assert runner.after_racing and set(runner.after_racing) == {"wait"}
    # The cancel's divergence did not repeat on the fresh re-run: unstable, with both signatures kept.
    assert summary["unstable"] > 0 and not session.findings
    detail = summary["unstable_details"][0]
    assert detail["first"] != detail["rerun"] and detail["steps"]


def test_only_the_end_race_is_a_racing_prefix() -> None:
    from contract.policy import END_RACE
    from harness.fuzz.lockstep import classify
    from harness.results import NOT_MODELLED_SKIP, Results, Skip

    def kind(reason: str) -> str:
        return classify(Results(skips=[Skip("fuzz", "10.0.2", reason, NOT_MODELLED_SKIP)]), 0.0).kind

    assert kind(f"reference: not modelled: {END_RACE} (max-bandwidth 0)") == "racing"
    # A step the model cannot follow during the race ends the sequence like any not-modelled step.
    assert kind("reference: not modelled: cancel step while a migration runs at full speed") == "not-modelled"
