"""``migconform merge --plan``: the results of a plan's jobs, checked to be exactly its cells, into one file.

A plain merge trusts its inputs (the later of two files for the same item wins). A CI merge must not: a
job that never uploaded its results, or one uploaded twice, would silently shrink or skew the matrix. So
every input must name its cell (``migconform run --cell``, recorded in ``meta.cell``), every cell must come
exactly once, and its ``--shard`` must be the plan's. Columns get the lab kernel (``10.0.2 / kernel 6.12``)
so that one QEMU on two kernels is two columns, and log folders moved with the artifacts are found again
beside their results file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import results as results_io
from harness.ci.plan import Cell, Plan, column_label
from harness.commands.outputs import load_results
from harness.errors import UsageError
from harness.results import Results


@dataclasses.dataclass
class PlanMerge:
    merged: Results
    missing: list[str]  # one line per missing cell, naming it and the file its job writes


def merge_with_plan(plan: Plan, inputs: Sequence[Path]) -> PlanMerge:
    """Inputs given: each must be a distinct cell of the plan (UsageError, exit 2, naming the cell and both
    files, otherwise). No inputs: the plan's own paths, a missing file being a missing cell."""
    cells = {cell.id: cell for cell in plan.cells}
    found: dict[str, tuple[Path, Results]] = {}
    missing: list[str] = []
    paths = list(inputs)
    if not paths:
        for cell in plan.cells:
            path = Path(plan.results_path(cell))
            if path.is_file():
                paths.append(path)
    for path in paths:
        part = load_results(path)
        cell_id = part.meta.get("cell")
        if not cell_id:
            raise UsageError(f"{path}: records no cell (its run had no --cell): not a job of the plan")
        known = cells.get(str(cell_id))
        if known is None:
            raise UsageError(f"{path}: cell {cell_id} is not in the plan (cells: {', '.join(cells)})")
        cell = known
        if cell.id in found:
            raise UsageError(f"cell {cell.id} twice: {found[cell.id][0]} and {path}")
        if part.meta.get("shard") != cell.shard_text:
            raise UsageError(
                f"{path}: cell {cell.id} ran --shard {part.meta.get('shard')}, the plan says {cell.shard_text}"
            )
        found[cell.id] = (path, part)
    for cell in plan.cells:
        if cell.id not in found:
            what = f"pair {cell.label}" if cell.destination else f"QEMU {cell.label}"
            missing.append(
                f"missing cell {cell.id} ({what}, kernel {cell.kernel or 'none'}, shard {cell.shard_text}): "
                f"no results from its job ({plan.results_path(cell)})"
            )
    parts = [_relabel(found[c.id][1], c, found[c.id][0]) for c in plan.cells if c.id in found]
    merged = results_io.merge(parts)
    columns: list[str] = []
    for part in parts:
        for column in part.meta.get("versions") or []:
            if column not in columns:
                columns.append(column)
    merged.meta["versions"] = columns
    merged.meta["ci"] = {
        "plan": plan.to_json()["axes"],
        "cells": {
            cell_id: {
                "dir": str(path.parent.resolve()),
                "results": str(path),
                "columns": part.meta.get("versions") or [],
            }
            for cell_id, (path, part) in found.items()
        },
        "items": _item_cells(parts),
        "missing": missing,
    }
    return PlanMerge(merged, missing)


def _item_cells(parts: Sequence[Results]) -> dict[str, dict[str, str]]:
    """column -> scenario -> cell id: which job's folder a report cell links to."""
    out: dict[str, dict[str, str]] = {}
    for part in parts:
        cell_id = str(part.meta.get("cell"))
        for o in part.outcomes:
            out.setdefault(results_io.outcome_column(o), {})[o.scenario] = cell_id
        keys = [(e.scenario, e.column) for e in part.errors] + [(s.scenario, s.column) for s in part.skips]
        for scenario, column in keys + [(w.scenario, w.column) for w in part.not_run]:
            out.setdefault(column, {})[scenario] = cell_id
    return out


def _relabel(part: Results, cell: Cell, path: Path) -> Results:
    """The part with the plan's columns and its log folders found where the artifacts put them."""
    rename = {str(c): column_label(str(c), cell.kernel) for c in part.meta.get("versions") or []}
    logs_root = part.meta.get("logs_dir")

    def column(value: str) -> str:
        return rename.get(value, column_label(value, cell.kernel))

    def logs(value: str | None) -> str | None:
        return _moved_logs(value, logs_root, path)

    outcomes = []
    for o in part.outcomes:
        extra: dict[str, Any] = {**o.extra, "column": column(results_io.outcome_column(o))}
        outcomes.append(dataclasses.replace(o, extra=extra, logs=logs(o.logs)))
    meta = {**part.meta, "versions": [rename[c] for c in rename]}
    return Results(
        outcomes=outcomes,
        comparisons=[dataclasses.replace(c, column=column(results_io.comparison_column(c))) for c in part.comparisons],
        errors=[dataclasses.replace(e, column=column(e.column), logs=logs(e.logs)) for e in part.errors],
        skips=[dataclasses.replace(s, column=column(s.column)) for s in part.skips],
        not_run=[dataclasses.replace(w, column=column(w.column)) for w in part.not_run],
        meta=meta,
        floor=part.floor,
        stability=[dataclasses.replace(s, column=column(s.column)) for s in part.stability],
    )


def _moved_logs(value: str | None, logs_root: Any, results_path: Path) -> str | None:
    """A log folder recorded on the job's machine, found beside the results file when it is not where it was
    (artifacts unpacked elsewhere); kept as recorded when it cannot be found either way."""
    if not value or Path(value).exists() or not logs_root:
        return value
    try:
        relative = Path(value).relative_to(Path(str(logs_root)))
    except ValueError:
        return value
    moved = results_path.parent / Path(str(logs_root)).name / relative
    return str(moved.resolve()) if moved.exists() else value
