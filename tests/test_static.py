"""The project's own code holds to its standards: ruff and mypy --strict pass on harness/ and reference_impl/.

Run as tests so that CI (which runs only the README's test command) enforces them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
