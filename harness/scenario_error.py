"""The one error a scenario file that cannot be loaded raises, whichever check refused it.

The reader, the table and step parsers, the file checks and --no-exec all raise it, so that a caller (the
CLI: exit 2) catches one class and the author reads one form: file, dotted key, problem, allowed values.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from harness.errors import MigconformError


class ScenarioError(MigconformError):
    """A scenario file that cannot be loaded; the message is meant for the scenario's author."""

    def __init__(self, path: str | Path, key: str | None, problem: str, allowed: Iterable[str] | None = None):
        self.path = str(path)
        self.key = key
        self.problem = problem
        self.allowed = tuple(allowed) if allowed is not None else None
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        hint = f" (allowed: {', '.join(self.allowed)})" if self.allowed is not None else ""
        super().__init__(f"{where}{problem}{hint}")
