"""Reports of a run: the scenario x version matrix that the console, JUnit and HTML reports render.

Each cell is the state of one scenario on one column: agree, DIVERGE, skip (with reason), not modelled (the
model does not model something the scenario uses: QEMU's outcome stands alone), error (the
harness failed), environment error (the host failed: out of memory or disk), not run (an interrupted
run), or, when only one backend ran, that backend's verdict. A cell also carries the item's kept log
folder and how its QEMUs had to be ended, when that was more than ``quit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.outcome import Outcome
from contract.versions import Version
from harness.compare import Comparison
from harness.cross_matrix import axes, cross_matrices, split_column
from harness.results import NOT_MODELLED_SKIP, Results, comparison_column, outcome_column

KINDS = ("agree", "diverge", "known-bug", "not-modelled", "skip", "error", "environment", "not-run", "outcome")


@dataclass
class Cell:
    kind: str
    reference: Outcome | None = None
    qemu: Outcome | None = None
    comparison: Comparison | None = None
    detail: str = ""  # skip reason, harness error, or "" otherwise
    logs: str | None = None  # the item's kept QEMU logs (--keep-logs)

    @property
    def shutdown(self) -> dict[str, str]:
        """side -> how its QEMU had to be ended, for the QEMUs ``quit`` did not end (executor's record)."""
        note = self.qemu.extra.get("shutdown") if self.qemu is not None else None
        return {str(k): str(v) for k, v in note.items()} if isinstance(note, dict) else {}

    @property
    def crash(self) -> dict[str, dict[str, object]]:
        """side -> how its QEMU crashed (signal, the kernel's fault lines), for QEMUs that died by a fault."""
        record = self.qemu.extra.get("crash") if self.qemu is not None else None
        return {str(k): v for k, v in record.items() if isinstance(v, dict)} if isinstance(record, dict) else {}

    @property
    def known_bug_gone(self) -> str | None:
        """The message of a known QEMU bug that this agreeing case no longer reproduces (harness.known_bugs)."""
        return self.comparison.known_bug_gone if self.comparison is not None else None

    @property
    def label(self) -> str:
        if self.kind == "agree":
            return "agree (known bug gone)" if self.known_bug_gone else "agree"
        if self.kind == "diverge":
            return "DIVERGE"
        if self.kind == "known-bug":
            return "known QEMU bug"
        if self.kind == "skip":
            return f"skip({self.detail})"
        if self.kind == "not-modelled":
            return f"not modelled({self.detail})"
        if self.kind == "error":
            return "error"
        if self.kind == "environment":
            return "environment error"
        if self.kind == "not-run":
            return "not run"
        outcome = self.qemu or self.reference
        return verdict_text(outcome) if outcome is not None else "?"


def verdict_text(outcome: Outcome) -> str:
    """``refused@migrate``, ``completed``, ... : the verdict with the stage where it ended."""
    if outcome.verdict == "skipped":
        return "skipped"
    return f"{outcome.verdict}@{outcome.stage}" if outcome.stage else outcome.verdict


@dataclass
class Matrix:
    scenarios: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def cell(self, scenario: str, column: str) -> Cell | None:
        return self.cells.get((scenario, column))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for cell in self.cells.values():
            counts[cell.kind] += 1
        return counts


def _column_order(results: Results, columns: set[str]) -> list[str]:
    ordered = [c for c in results.meta.get("versions") or [] if c in columns]
    rest = sorted(columns - set(ordered), key=_version_key)
    return ordered + rest


def _version_key(column: str) -> tuple[Version, str]:
    try:
        return Version.parse(column), column
    except ValueError:
        return Version(0, 0), column


def build_matrix(results: Results) -> Matrix:
    outcomes: dict[tuple[str, str, str], Outcome] = {}
    for o in results.outcomes:
        outcomes[(o.scenario, outcome_column(o), o.backend)] = o
    keys: set[tuple[str, str]] = {(s, c) for s, c, _ in outcomes}
    keys |= {(c.scenario, comparison_column(c)) for c in results.comparisons}
    keys |= {(e.scenario, e.column) for e in results.errors}
    keys |= {(s.scenario, s.column) for s in results.skips}
    keys |= {(w.scenario, w.column) for w in results.not_run}
    matrix = Matrix(
        scenarios=sorted({s for s, _ in keys}),
        columns=_column_order(results, {c for _, c in keys}),
    )
    for scenario, column in keys:
        ref = outcomes.get((scenario, column, "reference"))
        qemu = outcomes.get((scenario, column, "qemu"))
        logs = qemu.logs if qemu is not None else None
        matrix.cells[(scenario, column)] = Cell(kind="outcome", reference=ref, qemu=qemu, logs=logs)
    for s in results.skips:
        cell = matrix.cells[(s.scenario, s.column)]
        if s.kind == NOT_MODELLED_SKIP:
            cell.kind, cell.detail = "not-modelled", s.reason.removeprefix("reference: not modelled: ")
        else:
            cell.kind, cell.detail = "skip", s.reason
    for c in results.comparisons:
        cell = matrix.cells[(c.scenario, comparison_column(c))]
        cell.kind = "agree" if c.agree else ("known-bug" if c.known_bug else "diverge")
        cell.comparison = c
    for e in sorted(results.errors, key=lambda e: e.kind == "environment"):
        cell = matrix.cells[(e.scenario, e.column)]
        if cell.kind != "error":  # a harness failure on either backend outranks a host failure on the other
            cell.kind = "environment" if e.kind == "environment" else "error"
        cell.detail = (cell.detail + "\n" if cell.detail else "") + f"{e.backend}: {e.error}"
        cell.logs = cell.logs or e.logs
    for w in results.not_run:
        cell = matrix.cells[(w.scenario, w.column)]
        if cell.kind == "outcome" and cell.reference is None and cell.qemu is None:
            cell.kind, cell.detail = "not-run", "the run ended before this item finished"
    return matrix


def summary_line(matrix: Matrix) -> str:
    counts = matrix.counts()
    parts = [f"{counts['agree']} agree", f"{counts['diverge']} diverge", f"{counts['skip']} skipped"]
    if counts["known-bug"]:
        parts.append(f"{counts['known-bug']} known QEMU bugs")
    if counts["not-modelled"]:
        parts.append(f"{counts['not-modelled']} not modelled")
    gone = sum(1 for cell in matrix.cells.values() if cell.known_bug_gone)
    if gone:
        parts.append(f"{gone} known QEMU bugs no longer reproduce")
    if counts["error"]:
        parts.append(f"{counts['error']} errors")
    if counts["environment"]:
        parts.append(f"{counts['environment']} environment errors")
    if counts["not-run"]:
        parts.append(f"{counts['not-run']} not run")
    if counts["outcome"]:
        parts.append(f"{counts['outcome']} single-backend outcomes")
    return ", ".join(parts)


def plain_columns(matrix: Matrix) -> list[str]:
    """The columns of one QEMU version each: the main table's (cross-version ones get a square each)."""
    return [c for c in matrix.columns if split_column(c) is None]


def cross_cells(matrix: Matrix) -> dict[str, tuple[list[str], list[str], dict[tuple[str, str], Cell]]]:
    """scenario -> (sources, destinations, (source, destination) -> cell) for each cross-version scenario."""
    states = [(s, c, c) for (s, c) in matrix.cells if split_column(c) is not None]
    out: dict[str, tuple[list[str], list[str], dict[tuple[str, str], Cell]]] = {}
    for scenario, rows in cross_matrices(states).items():
        sources, destinations = axes(rows)
        cells = {
            (src, dst): matrix.cells[(scenario, column)] for src, row in rows.items() for dst, column in row.items()
        }
        out[scenario] = (sources, destinations, cells)
    return out
