"""The project's own code holds to its standards: ruff and mypy --strict pass on harness/ and reference_impl/,
and nothing cites a document that is not in the repository.

Run as tests so that CI (which runs only the README's test command) enforces them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from harness.settings import DEFAULT_CACHE_DIRNAME

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["harness", "reference_impl"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_clean() -> None:
    result = _run(["ruff", "check", *PACKAGES, "tests", "benchmarks"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    result = _run(["mypy", "--strict", *PACKAGES])
    assert result.returncode == 0, result.stdout + result.stderr


# Citations of documents that live outside this repository. A reader of the code, of a scenario, or of an
# HTML report built from one has only this repository, so every citation must name one of its own docs
# (docs/*.md) or the QEMU / Linux function a fact comes from.
EXTERNAL_CITATIONS = (
    "../shared",
    "shared/spec",
    "shared/reference",
    "fact sheet",
    "lab sheet",
    "scenario-contract.md",
    "qemu-migration-facts.md",
    "vfio-mtty-lab.md",
    "qemu-mutant-build.md",
    "lab §",
)
# This file names the patterns it looks for.
CITATION_CHECK_EXCLUDED = {"tests/test_static.py"}
# A "§" in a scenario description must name the repository document whose section it is.
_NAMED_SECTION = re.compile(r"(docs/[\w.-]+\.md)`?,? §")


def _project_files() -> list[str]:
    """The files the project ships (tracked or new), so that a generated or ignored file does not count."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (an unpacked source tree): every file outside the usual generated folders.
        skip = {".git", ".venv", DEFAULT_CACHE_DIRNAME, "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        return [
            str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)
        ]
    return [name for name in listed.split("\0") if name]


def test_no_citation_of_documents_outside_the_repository() -> None:
    offenders: list[str] = []
    for name in _project_files():
        if name in CITATION_CHECK_EXCLUDED:
            continue
        path = ROOT / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # binary files and files deleted in the work tree hold no citations
        for number, line in enumerate(text.splitlines(), 1):
            lowered = line.lower()
            offenders += [f"{name}:{number}: {pattern!r}" for pattern in EXTERNAL_CITATIONS if pattern in lowered]
    assert not offenders, "citations of documents outside the repository:\n" + "\n".join(offenders)


def test_scenario_descriptions_cite_no_bare_section_numbers() -> None:
    """Descriptions are shown in every report; a bare "§1.7" there points at nothing the user has."""
    offenders: list[str] = []
    files = sorted((ROOT / "tests").glob("**/scenarios/*.toml"))
    assert files, "no scenario files found"
    for path in files:
        description = str(tomllib.loads(path.read_text(encoding="utf-8")).get("description", ""))
        bare = description.count("§") - len(_NAMED_SECTION.findall(description))
        missing = [doc for doc in _NAMED_SECTION.findall(description) if not (ROOT / doc).is_file()]
        if bare or missing:
            offenders.append(f"{path.relative_to(ROOT)}: {description}")
    assert not offenders, "scenario descriptions with a bare or dangling §:\n" + "\n".join(offenders)
