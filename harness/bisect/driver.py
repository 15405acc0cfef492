"""`migconform bisect`'s logic: which commits to evaluate, in which order, and what to tell git.

The evaluation of a commit (build it, run the scenarios, judge) is injected (:data:`Evaluate`), so this logic
runs in CI on a small real git history without building anything (tests/unit/test_bisect.py); the real
evaluation is harness.bisect.evaluate. Both endpoints are evaluated first, the good one first: a bisection
whose bad end is not bad, or whose good end is already bad, would name a commit that means nothing, and the
``--against good`` comparison needs the good revision's outcomes before any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.bisect.git import GitTree, Mark
from harness.errors import MigconformError

VERDICTS = ("good", "bad", "skip")


class BisectStop(MigconformError):
    """The bisection cannot name a commit: an endpoint is not what the user said, or (``unjudged``) it does
    not build or its scenarios cannot run."""

    def __init__(self, message: str, *, unjudged: bool = False) -> None:
        super().__init__(message)
        self.unjudged = unjudged


@dataclass(frozen=True)
class Evaluation:
    """One commit judged: ``verdict`` good | bad | skip (a build failure or an item that could not run),
    ``reason`` in one line, ``changes`` the outcome differences that made it bad."""

    rev: str
    verdict: str
    reason: str
    changes: tuple[str, ...] = ()
    seconds: float = 0.0
    build: str = ""  # "cached" | "built in N s" | "" (not built)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"commit": self.rev, "verdict": self.verdict, "reason": self.reason}
        out.update(seconds=self.seconds, build=self.build, changes=list(self.changes))
        return out


# Called with the tree checked out at the commit it is given.
Evaluate = Callable[[str], Evaluation]


@dataclass
class BisectResult:
    good: str
    bad: str
    first_bad: str | None = None
    candidates: tuple[str, ...] = ()  # only skipped commits were left: the first bad is one of these
    steps: list[Evaluation] = field(default_factory=list)
    subjects: dict[str, str] = field(default_factory=dict)

    def evaluation(self, rev: str) -> Evaluation | None:
        return next((step for step in self.steps if step.rev == rev), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "good": self.good,
            "bad": self.bad,
            "first_bad": self.first_bad,
            "candidates": list(self.candidates),
            "subjects": self.subjects,
            "steps": [step.to_json() for step in self.steps],
        }


def _endpoint(result: BisectResult, evaluation: Evaluation, expected: str, option: str) -> None:
    if evaluation.verdict == expected:
        return
    rev = evaluation.rev[:12]
    if evaluation.verdict == "skip":
        raise BisectStop(f"{option} {rev} cannot be judged: {evaluation.reason}", unjudged=True)
    if expected == "bad":
        raise BisectStop(f"{option} {rev} is not bad ({evaluation.reason}): nothing to bisect")
    changes = "".join(f"\n  {line}" for line in evaluation.changes)
    raise BisectStop(f"{option} {rev} is already bad ({evaluation.reason}):{changes}")


def run_bisect(
    tree: GitTree, good: str, bad: str, evaluate: Evaluate, log: Callable[[str], None] = print
) -> BisectResult:
    """Bisect ``good``..``bad`` in ``tree`` with ``evaluate``; the tree is back where it was on return, and on
    any exception (KeyboardInterrupt included) too (GitTree.bisecting)."""
    good_sha, bad_sha = tree.commit(good), tree.commit(bad)
    tree.check_ready(good_sha, bad_sha)
    result = BisectResult(good=good_sha, bad=bad_sha)

    def judge(rev: str, what: str) -> Evaluation:
        result.subjects[rev] = tree.subject(rev)
        log(f"{what} {result.subjects[rev]}")
        evaluation = evaluate(rev)
        if evaluation.verdict not in VERDICTS:
            raise ValueError(f"an evaluation's verdict is one of {VERDICTS}, not {evaluation.verdict!r}")
        result.steps.append(evaluation)
        log(f"  {evaluation.verdict}: {evaluation.reason}")
        return evaluation

    with tree.bisecting():
        for rev, expected, option in ((good_sha, "good", "--good"), (bad_sha, "bad", "--bad")):
            tree.checkout(rev)
            _endpoint(result, judge(rev, option.removeprefix("--")), expected, option)
        tree.mark("bad", bad_sha)
        mark: Mark = tree.mark("good", good_sha)
        while not mark.done:
            rev = tree.head()
            mark = tree.mark(judge(rev, "testing").verdict, rev)
        result.first_bad = mark.first_bad
        result.candidates = mark.candidates
        for named in [r for r in (mark.first_bad, *mark.candidates) if r is not None]:
            result.subjects.setdefault(named, tree.subject(named))
    return result
