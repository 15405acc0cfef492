"""``migconform fuzz`` on real QEMU: a short run compares steps and leaves loadable files, and a model gap planted in
this process (a unit-level mutation of one model rule, undone after the test) is found and shrunk to its step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.binaries import QemuBinary
from harness.fuzz.lockstep import LockstepRunner
from harness.fuzz.session import FuzzSession
from harness.fuzz.vocabulary import FUZZ_VM, vocabulary_for
from harness.loader import load_scenario
from harness.targets import targets_for_binaries
from reference_impl import steps as model_steps

PLANTED = "planted model gap: stop refused"


def _session(
    binary: QemuBinary, tmp_path: Path, budget_s: float, actions: tuple[str, ...] | None = None
) -> FuzzSession:
    (target,) = targets_for_binaries([binary])
    vocab = vocabulary_for(binary)
    if actions is not None:
        vocab = dataclasses.replace(vocab, actions=actions)
    return FuzzSession(
        LockstepRunner(target, FUZZ_VM),
        vocab,
        budget_s=budget_s,
        seed=1,
        found_dir=tmp_path / "found",
        db_dir=tmp_path / "db",
    )


def test_short_fuzz_run_compares_real_steps(qemu_binary: QemuBinary, tmp_path: Path) -> None:
    if qemu_binary.version.major < 10:
        pytest.skip("one real run is enough: the 10.x binary")
    session = _session(qemu_binary, tmp_path, budget_s=40.0)
    session.run()
    summary = session.summary()
    assert summary["steps"] > 0 and summary["runs"] == summary["steps"]
    assert summary["sequences"] > 0
    for divergence in summary["divergences"]:
        scenario = load_scenario(divergence["file"])
        assert scenario.steps and len(scenario.steps) <= 6


def test_fuzzer_finds_and_shrinks_a_planted_model_gap(
    qemu_binary: QemuBinary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if qemu_binary.version.major < 10:
        pytest.skip("one real run is enough: the 10.x binary")

    def refuse_stop(scene: object, scenario: object, step: object) -> str:
        return PLANTED

    # The mutation: the model's handler of the stop action now refuses it, which real QEMU never does.
    monkeypatch.setitem(model_steps.HANDLERS, "stop", refuse_stop)
    session = _session(qemu_binary, tmp_path, budget_s=90.0, actions=("set-capabilities", "cont", "stop"))
    session.run()
    planted = [f for f in session.findings.values() if f.check.model and f.check.model.error == PLANTED]
    assert planted, f"the planted gap was not found: {session.summary()}"
    # One finding per way it shows (stop on the source, the destination, both, or followed by a step the model
    # never reaches: other fields differ), each holding the planted step; the smallest is that step alone.
    assert all(any(s.action == "stop" for s in f.steps) for f in planted)
    finding = min(planted, key=lambda f: f.key)
    assert [s.action for s in finding.steps] == ["stop"]  # shrunk to the planted step alone
    assert finding.path is not None
    text = finding.path.read_text()
    assert "QEMU:  verdict=completed" in text and PLANTED in text
    assert [s.action for s in load_scenario(finding.path).steps or ()] == ["stop"]
