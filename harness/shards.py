"""``--shard K/N``: stable slices of a scenario list, so that N CI jobs split a suite without overlap."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from contract.scenario import Scenario


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1-based): raises ValueError with a message a user can act on."""
    try:
        k_text, n_text = text.split("/", 1)
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard expects K/N, e.g. 1/4, not {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard_of(scenario_id: str, n: int) -> int:
    """The 1-based shard a scenario belongs to: a hash of its id, so it never moves when others are added."""
    digest = hashlib.sha256(scenario_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(scenarios: Sequence[Scenario], k: int, n: int) -> list[Scenario]:
    return [s for s in scenarios if shard_of(s.id, n) == k]
