"""The source x destination matrix of each cross-version scenario, from a run's items.

A cross-version column is "SOURCE->DESTINATION" (harness.cross_targets); a scenario run over several pairs
reads best as a square: rows are the source's version, columns the destination's. Kept free of the
report modules so the results JSON (harness.results, the ``cross`` extension) can carry it too.
"""

from __future__ import annotations

from collections.abc import Iterable

from contract.versions import Version

ARROW = "->"


def split_column(column: str) -> tuple[str, str] | None:
    """(source, destination) of a cross-version column, None for a column of one version."""
    source, sep, destination = column.partition(ARROW)
    return (source, destination) if sep else None


def version_key(text: str) -> tuple[Version, str]:
    """Columns in version order ("10.0.2" after "7.2.22"); text that is no version sorts first."""
    try:
        return Version.parse(text), text
    except ValueError:
        return Version(0, 0), text


def cross_matrices(items: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    """scenario -> source -> destination -> state, from (scenario, column, state) of every item; items of
    one version are left out. Sources and destinations are in version order."""
    found: dict[str, dict[tuple[str, str], str]] = {}
    for scenario, column, state in items:
        pair = split_column(column)
        if pair is not None:
            found.setdefault(scenario, {})[pair] = state
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
