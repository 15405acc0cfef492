"""The argument types that refuse bad usage before any command runs (harness.errors.UsageError: exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from contract.scenario import Scenario
from harness.errors import UsageError
from harness.shards import load_durations, parse_shard, select_balanced, select_shard


def _whole_number(text: str, minimum: int, what: str = "a whole number") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError("must not be negative" if minimum == 0 else f"must be at least {minimum}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


AUTO = "auto"


def min_compared_type(text: str) -> int | str:
    return AUTO if text == AUTO else _whole_number(text, 0, "a whole number or auto")


def shard_option(text: str | None, scenarios: Sequence[Scenario], balance: str | None = None) -> list[Scenario]:
    """``--shard K/N`` of ``run``, ``conformance`` and ``sweep``: the K-th slice (all without the option); with
    ``--balance FILE|counts`` the slice of the duration-balanced assignment (harness.shards). A malformed
    value is a :class:`~harness.errors.UsageError` (exit 2) saying what it must be."""
    if not text:
        if balance:
            raise UsageError("--balance applies to --shard K/N only")
        return list(scenarios)
    try:
        k, n = parse_shard(text)
        if balance:
            return select_balanced(scenarios, k, n, load_durations(balance))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return select_shard(scenarios, k, n)
