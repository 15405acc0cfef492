"""`migconform bisect` end to end: a small git history made from Debian's QEMU source, one of whose commits is
a mutant (mutants/core-bgsnap-conflict-list.patch), bisected by building QEMU at each step and running the
mutant's scenario; the bisection must name the mutant commit and leave the tree where it was.

Opt-in: it builds QEMU five times (4 to 8 minutes each with ccache warm under load, 23 cold; docs/qemu-builds.md),
so it runs only with MIGCONFORM_BISECT=1 and needs the orig tarball of a `migconform qemu build` in the cache.
The driver's logic is tested without builds in tests/unit/test_bisect.py.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from harness import settings
from harness.cli import main
from harness.mutants.build import MUTANTS_DIR
from harness.qemu_build.found import store_root

PATCH = MUTANTS_DIR / "core-bgsnap-conflict-list.patch"
SCENARIO = MUTANTS_DIR / "scenarios" / "core-bgsnap-return-path.toml"
TARBALLS = sorted((store_root() / "src").glob("qemu_10.*.orig.tar.*"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not settings.bisect_end_to_end(),
        reason=f"builds QEMU at every bisection step (5 builds, 4 to 8 min each): set {settings.BISECT}=1 to run it",
    ),
    pytest.mark.skipif(not TARBALLS, reason=f"no QEMU 10.x orig tarball in {store_root() / 'src'}"),
]


def _git(tree: Path, *args: str) -> str:
    command = ["git", "-C", str(tree), "-c", "user.name=bisect", "-c", "user.email=bisect@example.invalid", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def make_history(tarball: Path, where: Path) -> tuple[Path, list[str]]:
    """The tree at commit 1, two harmless commits (a line in a docs file), the mutant, two more harmless."""
    with tarfile.open(tarball) as archive:
        archive.extractall(where, filter="data")
    tree = next(p for p in where.iterdir() if (p / "configure").is_file())
    _git(tree, "init", "-q", "-b", "main")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", f"QEMU from {tarball.name}")
    commits = [_git(tree, "rev-parse", "HEAD")]

    def harmless(index: int) -> None:
        with (tree / "docs" / "about" / "index.rst").open("a") as docs:
            docs.write(f"\n.. bisect test: harmless change {index}\n")
        _git(tree, "commit", "-q", "-am", f"docs: harmless change {index}")
        commits.append(_git(tree, "rev-parse", "HEAD"))

    harmless(1)
    harmless(2)
    subprocess.run(["patch", "-p1", "-s", "--no-backup-if-mismatch", "-d", str(tree), "-i", str(PATCH)], check=True)
    _git(tree, "commit", "-q", "-am", "migration: the mutant core-bgsnap-conflict-list")
    commits.append(_git(tree, "rev-parse", "HEAD"))
    harmless(3)
    harmless(4)
    return tree, commits


def test_bisect_names_the_mutant_commit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree, commits = make_history(TARBALLS[-1], tmp_path)
    out = tmp_path / "bisect.json"
    status = main(
        ["bisect", "--source", str(tree), "--good", commits[0], "--bad", "main", str(SCENARIO), "--json", str(out)]
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err
    result = json.loads(out.read_text())
    assert result["first_bad"] == commits[3]
    assert f"first bad commit: {commits[3]}" in printed.out
    assert "Background-snapshot is not compatible with return-path" in printed.out  # the outcome change
    assert _git(tree, "symbolic-ref", "--short", "HEAD") == "main"  # bisect reset
    assert _git(tree, "status", "--porcelain") == ""
