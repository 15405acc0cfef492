"""The texts the harness itself writes into an outcome's ``error`` (QEMU's own messages are QEMU's).

The executor raises and records them (harness.errors); the model predicts them with the same builders, so
the two cannot drift apart in a word. Only the parts that depend on the run are normalised by the comparison
(:func:`without_wait_bound`: the wait bound is a run option, ``--timeout``, not QEMU's behaviour).
"""

from __future__ import annotations

import re

# What the executor's wait step waits for first (harness.pair MigrationPair.wait_source_end).
SOURCE_MIGRATION_END = "the source migration to end"
DESTINATION_MIGRATION_END = "the destination migration to end"

_WAIT_BOUND = re.compile(r"\btimed out after \d+(?:\.\d+)? s\b")


def wait_timed_out(what: str, timeout: float, last_seen: str | None = None) -> str:
    """A bounded wait that ran out (harness.errors.MigrationTimeout): what it awaited, the bound, and the
    last state it saw."""
    seen = f" (last seen: {last_seen})" if last_seen is not None else ""
    return f"timed out after {timeout:g} s waiting for {what}{seen}"


def without_wait_bound(text: str) -> str:
    """``text`` with the bound of every :func:`wait_timed_out` replaced by ``<N>``."""
    return _WAIT_BOUND.sub("timed out after <N> s", text)


def vm_exited(side: str, status: int | None, last_stderr_line: str) -> str:
    """A QEMU that exited while the scenario still needed it (harness.errors.VmDied): N is the exit status,
    or minus the signal number; the line is QEMU's last stderr line without its prefixes."""
    return f"{side} QEMU exited with status {status}: {last_stderr_line}"
