"""A QEMU newer than every model profile is predicted with the newest one, and the run says so."""

from __future__ import annotations

from contract.scenario import Scenario
from contract.versions import PROFILES, Version, profile_for, profile_note
from harness.report import console
from harness.runner import RunOptions, run_sync
from harness.targets import Target


def test_note_only_past_the_newest_profile() -> None:
    newest = PROFILES[-1]
    assert profile_note(Version(11, 1, 3)) == f"no profile for 11.1: using {newest.short}"
    assert profile_for(Version(11, 1, 3)) == newest
    assert profile_note(Version(newest.major, newest.minor, 9)) is None
    assert profile_note(Version(9, 1, 2)) is None  # between profiles: the newest older one, no note
    assert profile_note("7.2.22") is None


def test_run_and_console_carry_the_note() -> None:
    results = run_sync([Scenario("t")], [Target("11.1.3", Version(11, 1, 3))], RunOptions(backend="reference"))
    (outcome,) = results.outcomes
    assert outcome.extra["profile_note"] == f"no profile for 11.1: using {PROFILES[-1].short}"
    assert f"model for 11.1.3: no profile for 11.1: using {PROFILES[-1].short}" in console.render(results)
    plain = run_sync([Scenario("t")], [Target("10.0.2", Version(10, 0, 2))], RunOptions(backend="reference"))
    assert "profile_note" not in plain.outcomes[0].extra
    assert "no profile" not in console.render(plain)
