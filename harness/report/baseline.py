"""``migconform report NEW.json --baseline OLD.json``: what changed since an earlier (merged) result.

A CI owner reads a matrix of hundreds of cells every night; what they need first is the difference: a cell
that diverges now and did not (a QEMU change, or ours), one that diverged and agrees now (fixed), one that
is skipped now and was compared (coverage lost), one that errs now. Cells are matched by scenario and
column (for a merged CI result, ``10.0.2 / kernel 6.12``); cells only one side has are counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from harness.report import Matrix, build_matrix
from harness.results import Results

SECTIONS = (
    ("new_divergences", "new divergences"),
    ("fixed", "fixed (diverged, agree now)"),
    ("new_skips", "new skips (compared before)"),
    ("new_errors", "new errors"),
    ("added", "new cells"),
    ("removed", "cells no longer run"),
)
_SKIPS = ("skip", "not-modelled")
_ERRORS = ("error", "environment", "not-run")


@dataclass
class Changes:
    baseline: str
    lists: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline, **{key: self.lists.get(key, []) for key, _ in SECTIONS}}

    def text(self) -> str:
        counts = ", ".join(f"{len(self.lists.get(key, []))} {label.split(' (')[0]}" for key, label in SECTIONS)
        lines = [f"\nagainst {self.baseline}: {counts}\n"]
        for key, label in SECTIONS:
            for item in self.lists.get(key, []):
                lines.append(f"  {label.split(' (')[0]}: {item}\n")
        return "".join(lines)


def _kinds(matrix: Matrix) -> dict[tuple[str, str], str]:
    return {key: cell.kind for key, cell in matrix.cells.items()}


def compare_runs(old: Results, new: Results, baseline: str) -> Changes:
    before, after = _kinds(build_matrix(old)), _kinds(build_matrix(new))
    lists: dict[str, list[str]] = {key: [] for key, _ in SECTIONS}
    for key in sorted(set(before) | set(after)):
        label = f"{key[0]} [{key[1]}]"
        was, now = before.get(key), after.get(key)
        if was is None:
            lists["added"].append(f"{label}: {now}")
        if now is None:
            lists["removed"].append(f"{label}: was {was}")
            continue
        if now == "diverge" and was != "diverge":
            lists["new_divergences"].append(f"{label} (was {was or 'absent'})")
        elif was == "diverge" and now in ("agree", "known-bug"):
            lists["fixed"].append(f"{label} (now {now})")
        elif now in _SKIPS and was is not None and was not in _SKIPS:
            lists["new_skips"].append(f"{label} (was {was})")
        elif now in _ERRORS and was is not None and was not in _ERRORS:
            lists["new_errors"].append(f"{label}: {now} (was {was})")
    return Changes(baseline, lists)


def html_section(results: Results) -> str:
    """The changes recorded in ``meta.baseline`` by ``report --baseline``, as the page's first section."""
    data = results.meta.get("baseline")
    if not isinstance(data, dict):
        return ""
    parts = [f'<div class="meta"><b>against {escape(str(data.get("baseline")))}</b>']
    for key, label in SECTIONS:
        items = [str(i) for i in data.get(key) or []]
        kind = {"new_divergences": "diverge", "fixed": "agree", "new_skips": "skip"}.get(key, "error")
        parts.append(f'<div class="{kind}">{len(items)} {escape(label)}')
        if items:
            parts.append("<ul>" + "".join(f"<li><code>{escape(i)}</code></li>" for i in items) + "</ul>")
        parts.append("</div>")
    return "".join(parts) + "</div>"
