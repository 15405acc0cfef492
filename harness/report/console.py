"""Plain-text report: the matrix as a table, then every divergence and error in full, each with its kept
log folder and how its QEMUs had to be ended when ``quit`` did not do it; last, where the logs are."""

from __future__ import annotations

from harness.report import Cell, Matrix, build_matrix, cross_cells, plain_columns, summary_line
from harness.results import Results
from harness.stability import Stability


def _fmt(value: object) -> str:
    return "null" if value is None else str(value)


def _details(scenario: str, column: str, cell: Cell) -> list[str]:
    lines: list[str] = []
    if cell.kind in ("diverge", "known-bug") and cell.comparison is not None:
        if cell.kind == "known-bug":
            lines.append(f"KNOWN QEMU BUG {scenario} [{column}]: {cell.comparison.known_bug}")
        else:
            lines.append(f"DIVERGE {scenario} [{column}]")
        for name, (ref, qemu) in cell.comparison.differences.items():
            if name == "error" and cell.reference is not None and cell.qemu is not None:
                ref, qemu = cell.reference.error, cell.qemu.error  # exact messages, not the normalised ones
            lines.append(f"  {name}:")
            lines.append(f"    reference: {_fmt(ref)}")
            lines.append(f"    qemu:      {_fmt(qemu)}")
        same_error = "error" not in cell.comparison.differences
        if cell.reference is not None and cell.qemu is not None and same_error and cell.qemu.error:
            lines.append(f"  error (both): {cell.qemu.error}")
    elif cell.kind == "agree" and cell.known_bug_gone:
        lines.append(f"KNOWN BUG GONE {scenario} [{column}]: {cell.known_bug_gone}")
    elif cell.kind in ("error", "environment"):
        lines.append(f"{'ERROR' if cell.kind == 'error' else 'ENVIRONMENT ERROR'} {scenario} [{column}]")
        lines.extend(f"  {line}" for line in cell.detail.splitlines())
    for side, crash in cell.crash.items():
        if not lines:
            lines.append(f"CRASH {scenario} [{column}]")
        lines.append(f"  crash ({side}): {crash.get('signal')}")
        kernel = crash.get("kernel")
        lines.extend(f"    kernel: {line}" for line in (kernel if isinstance(kernel, list) else []))
        if crash.get("note"):
            lines.append(f"    note: {crash['note']}")
    shutdown = cell.shutdown
    if shutdown:
        if not lines:
            lines.append(f"SHUTDOWN {scenario} [{column}]")
        lines.extend(f"  shutdown ({side}): {note}" for side, note in shutdown.items())
    if lines and cell.logs:
        lines.append(f"  logs: {cell.logs}")
    return lines


def _table(matrix: Matrix, columns: list[str]) -> list[str]:
    """Scenarios x the columns of one version each (none: a run of cross-version items only)."""
    scenarios = [s for s in matrix.scenarios if any((s, c) in matrix.cells for c in columns)]
    labels = {key: cell.label for key, cell in matrix.cells.items()}
    return _grid("scenario", scenarios, columns, labels, 60)


def _square(
    scenario: str, sources: list[str], destinations: list[str], cells: dict[tuple[str, str], Cell]
) -> list[str]:
    """One cross-version scenario: a row per source version, a column per destination version."""
    labels = {key: cell.label for key, cell in cells.items()}
    return [f"{scenario} (cross-version)", *_grid("source \\ destination", sources, destinations, labels, 40)]


def _grid(corner: str, rows: list[str], columns: list[str], labels: dict[tuple[str, str], str], cap: int) -> list[str]:
    """A text table, each cell cut at ``cap`` characters ("-" where there is none)."""
    if not rows or not columns:
        return []
    first = max(len(corner), *(len(r) for r in rows))
    widths = [min(cap, max(len(c), *(len(labels.get((r, c), "-")) for r in rows))) for c in columns]
    out = ["  ".join([corner.ljust(first), *(c.ljust(w) for c, w in zip(columns, widths, strict=True))])]
    out.append("  ".join(["-" * first, *("-" * w for w in widths)]))
    for r in rows:
        line = [r.ljust(first)]
        for c, w in zip(columns, widths, strict=True):
            text = labels.get((r, c), "-")
            line.append((text if len(text) <= w else text[: w - 1] + "…").ljust(w))
        out.append("  ".join(line).rstrip())
    return out


def render(results: Results, matrix: Matrix | None = None) -> str:
    matrix = matrix or build_matrix(results)
    if not matrix.scenarios:
        return "no results\n"
    out = _table(matrix, plain_columns(matrix))
    squares = cross_cells(matrix)
    for scenario, (sources, destinations, cells) in squares.items():
        if out:
            out.append("")
        out.extend(_square(scenario, sources, destinations, cells))
    details: list[str] = []
    for s in matrix.scenarios:
        for c in matrix.columns:
            cell = matrix.cell(s, c)
            if cell is not None:
                details.extend(_details(s, c, cell))
    if details:
        out.append("")
        out.extend(details)
    if results.stability:
        out.append("")
        out.extend(render_stability(results.stability))
    notes = sorted(
        {
            f"model for {outcome.qemu_version}: {outcome.extra['profile_note']}"
            for outcome in results.outcomes
            if outcome.backend == "reference" and outcome.extra.get("profile_note")
        }
    )
    if notes:
        out.append("")
        out.extend(notes)
    out.append("")
    out.append(summary_line(matrix))
    kept = results.kept_logs()
    if kept:
        root = results.meta.get("logs_dir")
        where = f" under {root}" if root else ""
        out.append(f"QEMU logs kept for {len(kept)} item{'s' if len(kept) != 1 else ''}{where}")
    if results.floor is not None and results.floor.active:
        out.append(_floor_line(results))
    return "\n".join(out) + "\n"


def _floor_line(results: Results) -> str:
    """The coverage floor (--require-all / --min-compared): what it was, and whether it held."""
    assert results.floor is not None
    parts = []
    if results.floor.require_all:
        parts.append("every item")
    if results.floor.min_compared is not None:
        parts.append(f"at least {results.floor.min_compared}")
    problems = results.floor_problems
    state = "held" if not problems else f"NOT MET ({len(problems)} problems)"
    lines = [f"coverage floor ({' and '.join(parts)} compared; {len(results.comparisons)} were): {state}"]
    lines.extend(f"  NOT COMPARED {p}" if " was not compared " in p else f"  {p}" for p in problems)
    return "\n".join(lines)


def render_stability(items: list[Stability]) -> list[str]:
    """``--repeat``: one line per scenario x column (runs, agree, diverge, known bug, error, skip, distinct
    outcomes, status), then each unstable item's distinct outcomes in full."""
    header = ["scenario", "column", "runs", "agree", "diverge", "known", "error", "skip", "outcomes", "status"]
    rows = [
        [
            s.scenario,
            s.column,
            str(s.runs),
            str(s.agree),
            str(s.diverge),
            str(s.known_bug),
            str(s.error),
            str(s.skip),
            str(len(s.outcomes)),
            s.status.upper() if not s.stable else s.status,
        ]
        for s in sorted(items, key=lambda s: (s.scenario, s.column))
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [f"stability over {max(s.runs for s in items)} runs per item"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    for s in sorted(items, key=lambda s: (s.scenario, s.column)):
        if s.stable:
            continue
        lines.append("")
        lines.append(f"UNSTABLE {s.scenario} [{s.column}]: {len(s.outcomes)} distinct outcomes, {s.error} errors")
        for seen in s.outcomes:
            verdict = "agrees" if seen.agree else ("known QEMU bug" if seen.known_bug else "diverges")
            lines.append(f"  {seen.count}x ({verdict}): {_compact(seen.outcome)}")
        lines.extend(f"  error: {e.splitlines()[-1] if e else e}" for e in s.errors)
    unstable = sum(1 for s in items if not s.stable)
    lines.append("")
    lines.append(f"stability: {len(items) - unstable} stable, {unstable} unstable of {len(items)} items")
    return lines


def _compact(outcome: dict[str, object]) -> str:
    parts = []
    for name, value in outcome.items():
        if isinstance(value, dict) and set(value) == {"status", "runstate"}:
            value = f"{value['status']}/{value['runstate']}"
        parts.append(f"{name}={value}")
    return ", ".join(parts)
