"""migconform bisect's logic on a real, tiny git history (no QEMU, no build): the evaluation of a commit is
injected (mocks are for pure logic only), git is real. The end-to-end bisection over QEMU builds is
tests/mutants/test_bisect_e2e.py (opt-in: it builds QEMU several times)."""

from __future__ import annotations

import subprocess
from collections.abc import Collection
from pathlib import Path

import pytest

from contract.outcome import Outcome, VmState
from harness.bisect.driver import BisectStop, Evaluate, Evaluation, run_bisect
from harness.bisect.evaluate import judge
from harness.bisect.git import GitError, GitTree, parse_mark
from harness.compare import compare
from harness.results import ErrorRecord, Results, Skip


def _git(tree: Path, *args: str) -> str:
    command = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def history(tmp_path: Path) -> tuple[GitTree, list[str]]:
    """Seven commits; ``state`` holds "bad" from the fifth on (the first bad commit is commits[4])."""
    tree = tmp_path / "tree"
    tree.mkdir()
    _git(tree, "init", "-q", "-b", "main")
    commits = []
    for index in range(7):
        (tree / "state").write_text("bad\n" if index >= 4 else "good\n")
        (tree / "notes").write_text(f"change {index}\n")
        _git(tree, "add", "-A")
        _git(tree, "commit", "-q", "-m", f"change {index}")
        commits.append(_git(tree, "rev-parse", "HEAD"))
    return GitTree(tree), commits


def _by_state(tree: GitTree, skip: Collection[str] = (), seen: list[str] | None = None) -> Evaluate:
    def evaluate(rev: str) -> Evaluation:
        assert tree.head() == rev  # the tree is checked out at the commit judged
        if seen is not None:
            seen.append(rev)
        if rev in skip:
            return Evaluation(rev, "skip", "build failed: ninja")
        state = (tree.path / "state").read_text().strip()
        return Evaluation(rev, state, f"state {state}", ("s: x: model 1, this commit 2",) if state == "bad" else ())

    return evaluate


def test_names_the_first_bad_commit_and_leaves_the_branch_checked_out(history: tuple[GitTree, list[str]]) -> None:
    tree, commits = history
    seen: list[str] = []
    result = run_bisect(tree, commits[0], commits[6], _by_state(tree, seen=seen), log=lambda _m: None)
    assert result.first_bad == commits[4]
    assert seen[:2] == [commits[0], commits[6]]  # the endpoints first, the good one first
    assert len(seen) <= 2 + 3  # log2 of the five commits in between
    assert result.evaluation(commits[4]) is not None
    assert tree.where() == "main" and tree.head() == commits[6]
    assert not (tree.path / ".git" / "BISECT_START").exists()


def test_a_commit_that_does_not_build_is_skipped(history: tuple[GitTree, list[str]]) -> None:
    tree, commits = history
    result = run_bisect(tree, commits[0], commits[6], _by_state(tree, skip={commits[4]}), log=lambda _m: None)
    # git cannot tell commits[4] from commits[5] without judging commits[4]: both are named.
    assert result.first_bad is None
    assert set(result.candidates) == {commits[4], commits[5]}
    assert any(step.verdict == "skip" for step in result.steps)
    assert tree.where() == "main"


def test_a_skipped_commit_before_the_change_still_names_it(history: tuple[GitTree, list[str]]) -> None:
    tree, commits = history
    result = run_bisect(tree, commits[0], commits[6], _by_state(tree, skip={commits[2]}), log=lambda _m: None)
    assert result.first_bad == commits[4]


def test_interrupted_bisection_resets_the_tree(history: tuple[GitTree, list[str]]) -> None:
    tree, commits = history

    def evaluate(rev: str) -> Evaluation:
        if rev not in (commits[0], commits[6]):
            raise KeyboardInterrupt
        return _by_state(tree)(rev)

    with pytest.raises(KeyboardInterrupt):
        run_bisect(tree, commits[0], commits[6], evaluate, log=lambda _m: None)
    assert tree.where() == "main" and tree.head() == commits[6]
    assert not (tree.path / ".git" / "BISECT_START").exists()


def test_endpoints_that_are_not_what_was_said_stop_before_bisecting(history: tuple[GitTree, list[str]]) -> None:
    tree, commits = history
    with pytest.raises(BisectStop, match="is not bad"):
        run_bisect(tree, commits[0], commits[3], _by_state(tree), log=lambda _m: None)
    with pytest.raises(BisectStop, match="is already bad"):
        run_bisect(tree, commits[4], commits[6], _by_state(tree), log=lambda _m: None)
    with pytest.raises(BisectStop, match="cannot be judged") as stopped:
        run_bisect(tree, commits[0], commits[6], _by_state(tree, skip={commits[6]}), log=lambda _m: None)
    assert stopped.value.unjudged
    assert tree.where() == "main"


def test_refuses_a_dirty_tree_a_reversed_range_and_unknown_revisions(history: tuple[GitTree, list[str]]) -> None:
    tree, commits = history
    with pytest.raises(GitError, match="not an ancestor"):
        run_bisect(tree, commits[6], commits[0], _by_state(tree), log=lambda _m: None)
    with pytest.raises(GitError, match="no commit"):
        run_bisect(tree, "no-such-rev", commits[0], _by_state(tree), log=lambda _m: None)
    (tree.path / "state").write_text("edited\n")
    with pytest.raises(GitError, match="uncommitted changes"):
        run_bisect(tree, commits[0], commits[6], _by_state(tree), log=lambda _m: None)
    assert (tree.path / "state").read_text() == "edited\n"  # the user's edit is never touched


def test_git_answers_are_read() -> None:
    sha = "a" * 40
    assert parse_mark(f"{sha} is the first bad commit\ncommit {sha}\n").first_bad == sha
    skipped = f"There are only 'skip'ped commits left to test.\nThe first bad commit could be any of:\n{sha}\n"
    assert parse_mark(skipped).candidates == (sha,)
    assert not parse_mark("Bisecting: 2 revisions left to test after this (roughly 1 step)\n").done


def _outcome(backend: str, status: str, error: str | None = None) -> Outcome:
    state = VmState(status=status, runstate="running")
    verdict = "failed" if error else "completed"
    return Outcome("s1", backend, "10.2.2", verdict, stage="set-capabilities" if error else None, error=error,
                   source=state, destination=state)  # fmt: skip


def test_judge_against_the_model() -> None:
    model = _outcome("reference", "none", "Background-snapshot is not compatible with return-path")
    qemu = _outcome("qemu", "none")
    diverging = Results(outcomes=[model, qemu], comparisons=[compare(model, qemu)])
    bad = judge("r", diverging, "model", None)
    assert bad.verdict == "bad" and bad.reason == "1 of 1 differ (s1)"
    assert any(line.startswith("s1: error: model 'Background-snapshot") for line in bad.changes)
    agreeing = Results(comparisons=[compare(model, model)])
    assert judge("r", agreeing, "model", None).verdict == "good"
    skipped = Results(skips=[Skip("s1", "10.2.2", "qemu: requires UFFD write-protect")])
    assert judge("r", skipped, "model", None).verdict == "skip"
    errored = Results(errors=[ErrorRecord("s1", "10.2.2", "qemu", "QMP connection lost")])
    assert judge("r", errored, "model", None).verdict == "skip"


def test_judge_against_the_good_revision() -> None:
    good = _outcome("qemu", "none", "Background-snapshot is not compatible with return-path")
    first = judge("g", Results(outcomes=[good]), "good", None)
    assert first.verdict == "good"
    changed = judge("b", Results(outcomes=[_outcome("qemu", "none")]), "good", {"s1": good})
    assert changed.verdict == "bad" and changed.changes[0].startswith("s1: verdict: good revision 'failed'")
    assert judge("c", Results(outcomes=[good]), "good", {"s1": good}).verdict == "good"


def test_the_content_id_follows_the_checked_out_tree(history: tuple[GitTree, list[str]]) -> None:
    tree, commits = history
    at_head = tree.content_id()
    assert tree.content_id() == at_head
    tree.checkout(commits[5])
    assert tree.content_id() != at_head  # another commit's files
    before = tree.content_id()
    (tree.path / "downloaded").write_text("an untracked file the build copies too\n")
    assert tree.content_id() != before
