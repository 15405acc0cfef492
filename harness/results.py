"""A run's results: the contract's JSON (``outcomes`` + ``comparisons``) plus optional top-level extensions.

Extensions: ``meta`` (binaries, versions, host, kernel, start and end time), ``not_run`` (work items an
interrupted run never finished, so a partial file says what is missing), ``errors`` (harness failures:
an exception in the executor or the model, which count as failures, never as skips), ``skips``
(pairs that were not compared, with the reason) and, for ``--repeat N``, ``stability`` (per item: how many
real runs agreed, diverged, errored, and the distinct outcomes seen; harness.stability).

The file is rewritten atomically after every completed item, so a reader never sees half a file and an
interrupted run keeps everything that finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.compare import Comparison
from harness.stability import Stability
from reference_impl.outcome import Outcome


@dataclass(frozen=True)
class WorkItem:
    """One scenario on one column (a binary, or a model profile)."""

    scenario: str
    column: str

    def to_json(self) -> dict[str, str]:
        return {"scenario": self.scenario, "column": self.column}


@dataclass
class HarnessError:
    """The harness itself failed on an item (not QEMU's or the model's behaviour)."""

    scenario: str
    column: str
    backend: str
    error: str

    def to_json(self) -> dict[str, str]:
        return {"scenario": self.scenario, "column": self.column, "backend": self.backend, "error": self.error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HarnessError:
        return cls(str(data["scenario"]), str(data["column"]), str(data["backend"]), str(data["error"]))


@dataclass
class Skip:
    scenario: str
    column: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"scenario": self.scenario, "column": self.column, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Skip:
        return cls(str(data["scenario"]), str(data["column"]), str(data["reason"]))


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    errors: list[HarnessError] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    not_run: list[WorkItem] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # --repeat N: one entry per item that ran on QEMU (empty for a single run, and then not in the JSON)
    stability: list[Stability] = field(default_factory=list)

    @property
    def diverged(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.diverges]

    @property
    def known_bugs(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.agree and c.known_bug is not None]

    @property
    def unstable(self) -> list[Stability]:
        """Items of a repeated run whose real runs did not all give the same outcome, or errored."""
        return [s for s in self.stability if not s.stable]

    @property
    def passed(self) -> bool:
        """Exit status 0 of ``migconform run``: nothing diverged, nothing errored, nothing left unrun, and
        (``--repeat``) every item stable."""
        return not self.diverged and not self.errors and not self.not_run and not self.unstable

    def select(self, scenario: str, column: str) -> Results:
        """The part of these results about one scenario on one column (same meta)."""
        return Results(
            outcomes=[o for o in self.outcomes if o.scenario == scenario and outcome_column(o) == column],
            comparisons=[c for c in self.comparisons if c.scenario == scenario and comparison_column(c) == column],
            errors=[e for e in self.errors if (e.scenario, e.column) == (scenario, column)],
            skips=[s for s in self.skips if (s.scenario, s.column) == (scenario, column)],
            not_run=[w for w in self.not_run if (w.scenario, w.column) == (scenario, column)],
            meta=self.meta,
            stability=[s for s in self.stability if (s.scenario, s.column) == (scenario, column)],
        )

    def counts(self) -> dict[str, int]:
        return {
            "agree": sum(1 for c in self.comparisons if c.agree),
            "diverge": len(self.diverged),
            "known_bug": len(self.known_bugs),
            "skip": len(self.skips),
            "error": len(self.errors),
            "not_run": len(self.not_run),
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "outcomes": [o.to_json() for o in self.outcomes],
            "comparisons": [c.to_json() for c in self.comparisons],
            "errors": [e.to_json() for e in self.errors],
            "skips": [s.to_json() for s in self.skips],
            "not_run": [w.to_json() for w in self.not_run],
            "meta": self.meta,
        }
        if self.stability:
            out["stability"] = [s.to_json() for s in self.stability]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Results:
        if not isinstance(data, Mapping) or "outcomes" not in data:
            raise ValueError("not a migconform results file (no 'outcomes' list)")
        return cls(
            outcomes=[Outcome.from_json(o) for o in data.get("outcomes") or []],
            comparisons=[Comparison.from_json(c) for c in data.get("comparisons") or []],
            errors=[HarnessError.from_json(e) for e in data.get("errors") or []],
            skips=[Skip.from_json(s) for s in data.get("skips") or []],
            not_run=[WorkItem(str(w["scenario"]), str(w["column"])) for w in data.get("not_run") or []],
            meta=dict(data.get("meta") or {}),
            stability=[Stability.from_json(s) for s in data.get("stability") or []],
        )


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` in one step (temporary file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; a report is for others to read too
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(results: Results, path: str | Path) -> None:
    write_atomic(path, json.dumps(results.to_json(), indent=2, sort_keys=False) + "\n")


def load(path: str | Path) -> Results:
    try:
        with Path(path).open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    try:
        return Results.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def outcome_column(outcome: Outcome) -> str:
    """The report column an outcome belongs to (the binary's version, or a label when versions repeat)."""
    column = outcome.extra.get("column")
    return str(column) if column else outcome.qemu_version


def comparison_column(comparison: Comparison) -> str:
    return comparison.column or comparison.qemu_version


def merge(parts: Iterable[Results]) -> Results:
    """Join shard results (``--shard K/N``) or runs on different machines into one file.

    An item that one part did not run but another did is no longer "not run". When two parts ran the
    same item, the later part wins, so re-running a failed shard and merging it last replaces its items.
    """
    merged = Results()
    metas: list[dict[str, Any]] = []
    for part in parts:
        metas.append(part.meta)
        done = _items_done(part)
        merged.outcomes = [o for o in merged.outcomes if (o.scenario, outcome_column(o)) not in done]
        merged.comparisons = [c for c in merged.comparisons if (c.scenario, comparison_column(c)) not in done]
        merged.errors = [e for e in merged.errors if (e.scenario, e.column) not in done]
        merged.skips = [s for s in merged.skips if (s.scenario, s.column) not in done]
        merged.not_run = [w for w in merged.not_run if (w.scenario, w.column) not in done]
        merged.stability = [s for s in merged.stability if (s.scenario, s.column) not in done]
        merged.stability += part.stability
        merged.outcomes += part.outcomes
        merged.comparisons += part.comparisons
        merged.errors += part.errors
        merged.skips += part.skips
        ran_before = _items_done(merged)
        merged.not_run += [w for w in part.not_run if (w.scenario, w.column) not in ran_before]
    merged.meta = _merge_meta(metas)
    return merged


def _items_done(results: Results) -> set[tuple[str, str]]:
    done = {(o.scenario, outcome_column(o)) for o in results.outcomes}
    done |= {(c.scenario, comparison_column(c)) for c in results.comparisons}
    done |= {(e.scenario, e.column) for e in results.errors}
    done |= {(s.scenario, s.column) for s in results.skips}
    return done


def _merge_meta(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """Lists (binaries, versions) are united; times span all parts; each part's meta is kept as well."""
    out: dict[str, Any] = {"merged_from": metas}
    for key in ("binaries", "versions"):
        united: list[Any] = []
        for meta in metas:
            for item in meta.get(key) or []:
                if item not in united:
                    united.append(item)
        if united:
            out[key] = united
    starts = [m["start"] for m in metas if m.get("start")]
    ends = [m["end"] for m in metas if m.get("end")]
    if starts:
        out["start"] = min(starts)
    if ends:
        out["end"] = max(ends)
    return out
