"""The scenario suite migconform ships: this folder's ``*.toml`` files (README.md lists them).

Package data, not test data: ``migconform conformance``, ``migconform certify`` (its VFIO scenarios, also inside
the lab's guest), the mutant runs and the avocado recipe all run it, so an installed migconform must carry it
(pyproject.toml's package-data). The pytest suites under tests/ read it from here too.
"""

from __future__ import annotations

from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent
