"""``--shard K/N``: stable slices of a scenario list, so that N CI jobs split a suite without overlap.

Two ways to slice. Without ``--balance`` a scenario's shard is a hash of its id, so it never moves when
others are added. With ``--balance FILE`` (or ``counts``) the slices are a greedy longest-processing-time
assignment over the durations an earlier results file recorded: the one computation
(:func:`balanced_assignment`) that ``migconform ci plan`` uses to show the shards and every CI job uses to
pick its own, so that N jobs given the same scenarios and the same file never overlap and never miss one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from contract.scenario import Scenario

# ``--balance counts``: every scenario weighs the same (no durations file).
COUNTS = "counts"


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


def load_durations(source: str | Path) -> dict[str, int]:
    """Scenario id -> weight in milliseconds, from a results file's QEMU outcomes (``duration_s``; the mean
    over the columns and repeats it ran on, since one CI job runs one column). ``counts`` gives no
    durations. Integers, so that the assignment is the same on every machine; ValueError on a bad file."""
    if str(source) == COUNTS:
        return {}
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--balance {path}: no such file (a results file, or `counts`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--balance {path}: not a readable results file: {exc}") from None
    outcomes = data.get("outcomes") if isinstance(data, dict) else None
    if not isinstance(outcomes, list):
        raise ValueError(f"--balance {path}: not a migconform results file (no 'outcomes' list)")
    seen: dict[str, list[float]] = {}
    for outcome in outcomes:
        if not isinstance(outcome, dict) or outcome.get("backend") != "qemu":
            continue
        duration = outcome.get("duration_s")
        if isinstance(duration, (int, float)) and duration >= 0:
            seen.setdefault(str(outcome.get("scenario")), []).append(float(duration))
    return {sid: max(1, round(1000 * sum(times) / len(times))) for sid, times in seen.items()}


def weights_for(ids: Sequence[str], durations: Mapping[str, int]) -> dict[str, int]:
    """Every id's weight: its recorded duration, else the median of those recorded (a new scenario counts as
    a typical one), else 1 for all (no durations: balance by counts)."""
    known = sorted(durations[i] for i in ids if i in durations)
    fallback = known[len(known) // 2] if known else 1
    return {i: durations.get(i, fallback) for i in ids}


def balanced_assignment(ids: Sequence[str], durations: Mapping[str, int], n: int) -> dict[str, int]:
    """Scenario id -> 1-based shard: longest first, each to the least loaded shard (ties: the lower shard;
    equal weights: by id), so the result depends only on the set of ids, the durations and ``n``."""
    weights = weights_for(sorted(set(ids)), durations)
    loads = [0] * n
    out: dict[str, int] = {}
    for sid in sorted(weights, key=lambda i: (-weights[i], i)):
        shard = min(range(n), key=lambda s: (loads[s], s))
        loads[shard] += weights[sid]
        out[sid] = shard + 1
    return out


def shard_loads(ids: Sequence[str], durations: Mapping[str, int], n: int) -> list[tuple[list[str], int]]:
    """Per shard (1..n): its scenario ids (sorted) and expected load in ms, for the plan to show."""
    assignment = balanced_assignment(ids, durations, n)
    weights = weights_for(sorted(set(ids)), durations)
    shards: list[tuple[list[str], int]] = [([], 0) for _ in range(n)]
    for sid in sorted(assignment):
        members, load = shards[assignment[sid] - 1]
        members.append(sid)
        shards[assignment[sid] - 1] = (members, load + weights[sid])
    return shards


def select_balanced(scenarios: Sequence[Scenario], k: int, n: int, durations: Mapping[str, int]) -> list[Scenario]:
    assignment = balanced_assignment([s.id for s in scenarios], durations, n)
    return [s for s in scenarios if assignment[s.id] == k]
