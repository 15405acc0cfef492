"""A run's results: the contract's JSON (``outcomes`` + ``comparisons``) plus optional top-level extensions.

Extensions: ``meta`` (binaries, versions, host, kernel, start and end time, the logs folder), ``not_run``
(work items an interrupted run never finished, so a partial file says what is missing), ``errors``
(failures that are not QEMU's answer, never skips: ``kind`` ``harness`` for an exception in the executor or
the model, ``environment`` for a host that could not give the run what it needed, e.g. out of memory or
disk, :class:`harness.errors.HostEnvironmentError`), ``skips`` (pairs that were not compared, with the
reason and its ``kind``: ``host`` when the host lacks a capability the scenario declares, ``resource`` when
the run was not given something it needs), ``counts`` (the tally per category, for readers that do not
want to recount) and, for ``--repeat N``, ``stability`` (per item: how many real runs agreed, diverged,
errored, and the distinct outcomes seen; harness.stability).

A coverage floor (:class:`Floor`, ``--require-all`` / ``--min-compared``) makes a run that compared too
little fail: ``meta.floor`` records the floor, how many items were compared and whether it held, so a pass
always says how much was checked.

The file is rewritten atomically after every completed item, so a reader never sees half a file and an
interrupted run keeps everything that finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.outcome import Outcome
from harness.compare import Comparison
from harness.cross_matrix import cross_matrices
from harness.stability import Stability


def item_log_name(scenario: str, column: str) -> str:
    """The folder name of an item's logs: ``<scenario>__<column>``, reduced to characters every file system
    and URL takes; a name that had to be changed gets a short hash, so two items never share a folder."""
    raw = f"{scenario}__{column}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._") or "item"
    if safe != raw:
        safe = f"{safe[:80]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return safe


@dataclass(frozen=True)
class WorkItem:
    """One scenario on one column (a binary, or a model profile)."""

    scenario: str
    column: str

    def to_json(self) -> dict[str, str]:
        return {"scenario": self.scenario, "column": self.column}


ERROR_KINDS = ("harness", "environment")

# Exit statuses of ``migconform run`` (docs/scenario-format.md, "Command line").
EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


@dataclass
class ErrorRecord:
    """The record of an item that ended without an answer from QEMU or the model (a results file's ``errors``
    entry; the exception it records is gone by then, only its text is kept).

    ``kind`` separates the harness failing (``harness``: a bug to fix here) from the host failing
    (``environment``: out of memory or disk, a probe that fails), so that neither is filed as a QEMU bug and
    a full disk does not read like a harness regression. ``logs`` is the item's kept log folder, if any.
    """

    scenario: str
    column: str
    backend: str
    error: str
    kind: str = "harness"
    logs: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {
            "scenario": self.scenario,
            "column": self.column,
            "backend": self.backend,
            "error": self.error,
            "kind": self.kind,
        }
        if self.logs is not None:
            out["logs"] = self.logs
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ErrorRecord:
        kind = str(data.get("kind") or "harness")  # files written before the field existed: harness errors
        logs = data.get("logs")
        return cls(
            str(data["scenario"]),
            str(data["column"]),
            str(data["backend"]),
            str(data["error"]),
            kind=kind if kind in ERROR_KINDS else "harness",
            logs=str(logs) if logs is not None else None,
        )


# Skip kinds (Outcome.extra[SKIP_KIND] on the executor's skipped outcomes, Skip.kind here).
SKIP_KIND = "skip_kind"
# The host lacks a capability the scenario declares in ``requires`` (kvm, uffd, uffd-wp) or an accelerator
# it asks for: an honest skip, which differs between machines.
HOST_SKIP = "host"
# The run was not given a resource the scenario needs (no VFIO provider, a personality the provider lacks):
# a run that should have had it shrank. A skip of unknown kind counts as this one.
RESOURCE_SKIP = "resource"
# The model does not model something the scenario uses (reference_impl.limits): QEMU ran, nothing was
# compared. Counted apart from agree/diverge in every report; the bundled suite has none.
NOT_MODELLED_SKIP = "not-modelled"
SKIP_KINDS = (HOST_SKIP, RESOURCE_SKIP, NOT_MODELLED_SKIP)


@dataclass
class Skip:
    scenario: str
    column: str
    reason: str
    kind: str = RESOURCE_SKIP

    def to_json(self) -> dict[str, str]:
        return {"scenario": self.scenario, "column": self.column, "reason": self.reason, "kind": self.kind}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Skip:
        kind = str(data.get("kind") or RESOURCE_SKIP)
        return cls(str(data["scenario"]), str(data["column"]), str(data["reason"]), kind)


def skip_kind(outcome: Outcome) -> str:
    """The kind of a skipped outcome: what its producer recorded, else :data:`RESOURCE_SKIP`."""
    if outcome.not_modelled is not None:
        return NOT_MODELLED_SKIP
    kind = outcome.extra.get(SKIP_KIND)
    return str(kind) if kind in SKIP_KINDS else RESOURCE_SKIP


@dataclass(frozen=True)
class Floor:
    """How much a run must compare to pass.

    ``require_all``: every item must be compared; a skip fails the run with its reason.
    ``min_compared``: at least this many items must be compared (a comparison that found a known QEMU bug
    counts: it was compared).
    """

    require_all: bool = False
    min_compared: int | None = None

    @property
    def active(self) -> bool:
        return self.require_all or self.min_compared is not None

    def problems(self, results: Results) -> list[str]:
        """Why ``results`` fall below this floor (empty when it holds)."""
        problems: list[str] = []
        if self.require_all:
            for skip in results.skips:
                problems.append(f"{skip.scenario} [{skip.column}] was not compared ({skip.kind}): {skip.reason}")
        compared = len(results.comparisons)
        if self.min_compared is not None and compared < self.min_compared:
            kinds = {kind: sum(1 for s in results.skips if s.kind == kind) for kind in SKIP_KINDS}
            problems.append(
                f"{compared} items compared, fewer than the floor of {self.min_compared}: "
                f"{len(results.skips)} skipped ({kinds[HOST_SKIP]} for a host capability, "
                f"{kinds[RESOURCE_SKIP]} for a missing resource, {kinds[NOT_MODELLED_SKIP]} not modelled), "
                f"{len(results.errors)} errors, "
                f"{len(results.not_run)} not run"
            )
        return problems

    def to_json(self, results: Results) -> dict[str, Any]:
        problems = self.problems(results)
        return {
            "require_all": self.require_all,
            "min_compared": self.min_compared,
            "compared": len(results.comparisons),
            "held": not problems,
            "problems": problems,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Floor | None:
        if not isinstance(data, Mapping):
            return None
        minimum = data.get("min_compared")
        return cls(bool(data.get("require_all")), None if minimum is None else int(minimum))


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    not_run: list[WorkItem] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    floor: Floor | None = None
    # --repeat N: one entry per item that ran on QEMU (empty for a single run, and then not in the JSON)
    stability: list[Stability] = field(default_factory=list)

    @property
    def floor_problems(self) -> list[str]:
        """Why the coverage floor does not hold (empty without a floor or when it holds)."""
        return self.floor.problems(self) if self.floor is not None else []

    @property
    def diverged(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.diverges]

    @property
    def known_bugs(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.agree and c.known_bug is not None]

    @property
    def harness_errors(self) -> list[ErrorRecord]:
        return [e for e in self.errors if e.kind != "environment"]

    @property
    def environment_errors(self) -> list[ErrorRecord]:
        return [e for e in self.errors if e.kind == "environment"]

    @property
    def unstable(self) -> list[Stability]:
        """Items of a repeated run whose real runs did not all give the same outcome, or errored."""
        return [s for s in self.stability if not s.stable]

    @property
    def passed(self) -> bool:
        """Exit status 0 of ``migconform run``: nothing diverged, nothing errored, nothing left unrun, the
        coverage floor (if any) holds and (``--repeat``) every item was stable."""
        return (
            not self.diverged and not self.errors and not self.not_run and not self.floor_problems and not self.unstable
        )

    @property
    def exit_status(self) -> int:
        """1 when anything diverged, the harness failed, items were left unrun, the coverage floor does not
        hold or (``--repeat``) an item was unstable (the contract's failure); else 3 when only the host failed
        some items (nothing to report to QEMU or to us: fix the host and re-run); else 0."""
        if self.diverged or self.harness_errors or self.not_run or self.floor_problems or self.unstable:
            return EXIT_FAILED
        if self.environment_errors:
            return EXIT_ENVIRONMENT
        return EXIT_PASSED

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
            "error": len(self.harness_errors),
            "environment": len(self.environment_errors),
            "not_run": len(self.not_run),
        }

    def kept_logs(self) -> list[str]:
        """Every item's kept log folder (outcomes and errors), each once, in order."""
        found: list[str] = []
        for path in [o.logs for o in self.outcomes] + [e.logs for e in self.errors]:
            if path and path not in found:
                found.append(path)
        return found

    def to_json(self) -> dict[str, Any]:
        meta = dict(self.meta)
        if self.floor is not None and self.floor.active:
            meta["floor"] = self.floor.to_json(self)
        out: dict[str, Any] = {
            "outcomes": [o.to_json() for o in self.outcomes],
            "comparisons": [c.to_json() for c in self.comparisons],
            "errors": [e.to_json() for e in self.errors],
            "skips": [s.to_json() for s in self.skips],
            "not_run": [w.to_json() for w in self.not_run],
            "counts": self.counts(),
            "meta": meta,
        }
        if self.stability:
            out["stability"] = [s.to_json() for s in self.stability]
        cross = cross_matrices(self._item_states())
        if cross:
            out["cross"] = cross  # derived (so not read back): scenario -> source -> destination -> state
        return out

    def _item_states(self) -> list[tuple[str, str, str]]:
        """(scenario, column, state) per item, the state as the reports name it (agree, diverge, ...)."""
        states = [(w.scenario, w.column, "not-run") for w in self.not_run]
        states += [
            (s.scenario, s.column, "not-modelled" if s.kind == NOT_MODELLED_SKIP else "skip") for s in self.skips
        ]
        states += [(e.scenario, e.column, e.kind if e.kind == "environment" else "error") for e in self.errors]
        for c in self.comparisons:
            states.append(
                (c.scenario, comparison_column(c), "agree" if c.agree else ("known-bug" if c.known_bug else "diverge"))
            )
        return states

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Results:
        if not isinstance(data, Mapping) or "outcomes" not in data:
            raise ValueError("not a migconform results file (no 'outcomes' list)")
        return cls(
            outcomes=[Outcome.from_json(o) for o in data.get("outcomes") or []],
            comparisons=[Comparison.from_json(c) for c in data.get("comparisons") or []],
            errors=[ErrorRecord.from_json(e) for e in data.get("errors") or []],
            skips=[Skip.from_json(s) for s in data.get("skips") or []],
            not_run=[WorkItem(str(w["scenario"]), str(w["column"])) for w in data.get("not_run") or []],
            meta=dict(data.get("meta") or {}),
            floor=Floor.from_json(dict(data.get("meta") or {}).get("floor")),
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
    cross = {k: v for meta in metas for k, v in dict(meta.get("cross") or {}).items()}
    if cross:
        out["cross"] = cross  # every part's cross-version columns (harness.runner's meta)
    starts = [m["start"] for m in metas if m.get("start")]
    ends = [m["end"] for m in metas if m.get("end")]
    if starts:
        out["start"] = min(starts)
    if ends:
        out["end"] = max(ends)
    return out
