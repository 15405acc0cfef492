"""Known QEMU bugs: reported, not failing the run, and never hiding another divergence."""

from __future__ import annotations

from harness.compare import Comparison
from harness.known_bugs import KNOWN_DIVERGENCES, known_divergence
from harness.report import console, junit
from harness.results import Results
from reference_impl.versions import Version

ENTRY = KNOWN_DIVERGENCES[0]


def _comparison(differences: dict[str, list[object]]) -> Comparison:
    return Comparison(ENTRY.scenario, f"{ENTRY.version}.22", agree=not differences, differences=differences)


def test_entry_applies_to_every_micro_release_of_its_version_only() -> None:
    major, minor = (int(x) for x in ENTRY.version.split("."))
    assert known_divergence(ENTRY.scenario, Version(major, minor, 22)) is ENTRY
    assert known_divergence(ENTRY.scenario, Version(major + 1, minor)) is None
    assert known_divergence("no-such-scenario", Version(major, minor)) is None


def test_the_documented_difference_is_explained() -> None:
    comparison = _comparison({ENTRY.must_differ: [{"alive": True}, {"alive": False}]})
    assert ENTRY.problems(comparison) == []


def test_another_difference_is_not_hidden() -> None:
    comparison = _comparison({ENTRY.must_differ: [1, 2], "source.status": ["completed", "failed"]})
    assert any("source.status" in p for p in ENTRY.problems(comparison))


def test_agreement_means_the_entry_must_go() -> None:
    assert any("gone" in p for p in ENTRY.problems(_comparison({})))


def test_a_known_bug_is_reported_but_does_not_fail_the_run() -> None:
    comparison = _comparison({ENTRY.must_differ: [1, 2]})
    comparison.known_bug = ENTRY.reason
    results = Results(comparisons=[comparison])
    assert results.passed and results.counts()["known_bug"] == 1 and not results.diverged
    assert f"KNOWN QEMU BUG {ENTRY.scenario}" in console.render(results)
    xml = junit.render(results)
    assert 'type="known-qemu-bug"' in xml and 'failures="0"' in xml
    assert Comparison.from_json(comparison.to_json()).known_bug == ENTRY.reason


def test_an_unexplained_divergence_still_fails() -> None:
    results = Results(comparisons=[_comparison({ENTRY.must_differ: [1, 2]})])
    assert not results.passed and len(results.diverged) == 1
