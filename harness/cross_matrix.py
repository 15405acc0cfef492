"""The source x destination matrix of each cross-version scenario, from a run's items.

A cross-version column is "SOURCE->DESTINATION" (harness.cross_targets); a scenario run over several pairs
reads best as a square: rows are the source's version, columns the destination's. Kept free of the
report modules so the results JSON (harness.results, the ``cross`` extension) can carry it too.
"""

from __future__ import annotations

from collections.abc import Iterable

from contract.versions import Version

ARROW = "->"
# A merged CI column's lab kernel (harness.ci.plan.column_label): "7.2.22->10.0.2 / kernel 6.12".
KERNEL_MARK = " / kernel "


def split_kernel(column: str) -> tuple[str, str]:
    """(column without its lab kernel, the `` / kernel S`` suffix or "")."""
    head, sep, series = column.partition(KERNEL_MARK)
    return (head, sep + series) if sep else (column, "")


def split_column(column: str) -> tuple[str, str] | None:
    """(source, destination) of a cross-version column, None for a column of one version. A lab kernel suffix
    is neither side's version (a CI merge adds it to every column of a kernel's cells)."""
    source, sep, destination = split_kernel(column)[0].partition(ARROW)
    return (source, destination) if sep else None


def version_key(text: str) -> tuple[Version, str]:
    """Columns in version order ("10.0.2" after "7.2.22"); text that is no version sorts first; a lab kernel
    suffix sorts after its version."""
    try:
        return Version.parse(split_kernel(text)[0]), text
    except ValueError:
        return Version(0, 0), text


def cross_matrices(items: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    """scenario -> source -> destination -> state, from (scenario, column, state) of every item; items of
    one version are left out. Sources and destinations are in version order; a source run on a lab kernel
    (a CI merge's column) is the row ``7.2.22 / kernel 6.12``."""
    found: dict[str, dict[tuple[str, str], str]] = {}
    for scenario, column, state in items:
        pair = split_column(column)
        if pair is not None:  # one row per source and lab kernel: two kernels do not overwrite each other
            found.setdefault(scenario, {})[(pair[0] + split_kernel(column)[1], pair[1])] = state
    out: dict[str, dict[str, dict[str, str]]] = {}
    for scenario in sorted(found):
        cells = found[scenario]
        rows: dict[str, dict[str, str]] = {}
        for source, destination in sorted(cells, key=lambda p: (version_key(p[0]), version_key(p[1]))):
            rows.setdefault(source, {})[destination] = cells[(source, destination)]
        out[scenario] = rows
    return out


def axes(rows: dict[str, dict[str, str]]) -> tuple[list[str], list[str]]:
    """The sources and the destinations of one scenario's matrix, each in version order."""
    sources = sorted(rows, key=version_key)
    destinations = sorted({d for row in rows.values() for d in row}, key=version_key)
    return sources, destinations
