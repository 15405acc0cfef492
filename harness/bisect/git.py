"""The git side of `migconform bisect`: a QEMU work tree, and a ``git bisect`` session that always ends with
``git bisect reset``, so the tree is left on the branch or commit it was on, whatever stops the bisection."""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError

GIT_TIMEOUT_S = 300.0
# What `git bisect good|bad|skip` prints when it is done (git 2.30 to 2.47 wording).
_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit$", re.M)
_ONLY_SKIPPED = "There are only 'skip'ped commits left to test."


class GitError(UsageError):
    """A git command failed on the tree the user named: the tree or a revision is not what bisect needs."""


@dataclass(frozen=True)
class Mark:
    """What git answered to one ``git bisect good|bad|skip``: the first bad commit once known, the candidates
    when only skipped commits are left, else nothing (git checked out the next commit to test)."""

    first_bad: str | None = None
    candidates: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.first_bad is not None or bool(self.candidates)


def parse_mark(output: str) -> Mark:
    found = _FIRST_BAD.search(output)
    if found:
        return Mark(first_bad=found.group(1))
    if _ONLY_SKIPPED in output:
        return Mark(candidates=tuple(re.findall(r"^([0-9a-f]{40})$", output, flags=re.M)))
    return Mark()


class GitTree:
    """A git work tree (the user's QEMU checkout)."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["git", "-C", str(self.path), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"git {' '.join(args)} in {self.path}: {exc}") from exc

    def git(self, *args: str, check: bool = True) -> str:
        done = self._run(*args)
        if check and done.returncode != 0:
            raise GitError(f"git {' '.join(args)} in {self.path} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout + done.stderr

    def commit(self, rev: str) -> str:
        """The full hash of ``rev`` (a commit), or a GitError naming it."""
        done = self._run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if done.returncode != 0:
            raise GitError(f"{self.path}: no commit {rev!r}")
        return done.stdout.strip()

    def head(self) -> str:
        return self.commit("HEAD")

    def subject(self, rev: str) -> str:
        return self.git("log", "-1", "--format=%h %s", rev).strip()

    def where(self) -> str:
        """The branch HEAD is on, else the commit (what `git bisect reset` returns to)."""
        branch = self.git("symbolic-ref", "-q", "--short", "HEAD", check=False).strip()
        return branch or self.head()

    def check_ready(self, good: str, bad: str) -> None:
        """Refuse what would make `git bisect` fail half-way or lose the user's work: not a work tree, a
        bisection already under way, changes to tracked files, or a good revision that is not an ancestor of
        the bad one."""
        if self.git("rev-parse", "--is-inside-work-tree", check=False).strip() != "true":
            raise GitError(f"{self.path} is not a git work tree")
        marker = Path(self.git("rev-parse", "--git-path", "BISECT_START").strip())
        if (marker if marker.is_absolute() else self.path / marker).exists():
            raise GitError(f"{self.path}: a git bisect is already under way (git bisect reset ends it)")
        if self.git("status", "--porcelain", "--untracked-files=no").strip():
            raise GitError(f"{self.path} has uncommitted changes to tracked files: commit or stash them first")
        if good == bad:
            raise GitError("--good and --bad are the same commit")
        if self._run("merge-base", "--is-ancestor", good, bad).returncode != 0:
            raise GitError(f"--good {good[:12]} is not an ancestor of --bad {bad[:12]}")

    def content_id(self) -> str:
        """What the checked-out tree holds, cheaply: the commit's tree object (git already hashed every
        tracked file) plus the names, sizes and times of untracked files (e.g. downloaded subprojects), which
        a build copies too. Tracked files are unmodified (check_ready), so nothing else can differ."""
        tree_id = self.git("rev-parse", "HEAD^{tree}").strip()
        untracked = sorted(self.git("ls-files", "--others", "--exclude-standard", "-z").split("\0"))
        stamps = []
        for name in filter(None, untracked):
            with contextlib.suppress(OSError):
                st = (self.path / name).stat()
                stamps.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return f"{tree_id}|" + "|".join(stamps)

    def checkout(self, rev: str) -> None:
        self.git("checkout", "-q", "--detach", rev)

    def mark(self, verdict: str, rev: str) -> Mark:
        """``git bisect good|bad|skip rev``; git checks out the next commit to test unless it is done. git exits
        non-zero when only skipped commits are left ("We cannot bisect more!"): that is an answer too."""
        done = self._run("bisect", verdict, rev)
        mark = parse_mark(done.stdout + done.stderr)
        if done.returncode != 0 and not mark.done:
            raise GitError(f"git bisect {verdict} {rev[:12]} in {self.path}: {(done.stderr or done.stdout).strip()}")
        return mark

    @contextmanager
    def bisecting(self) -> Iterator[GitTree]:
        """A ``git bisect start`` session; ``git bisect reset`` on the way out, on an exception or Ctrl-C too."""
        self.git("bisect", "start")
        try:
            yield self
        finally:
            self.git("bisect", "reset", check=False)
