"""One self-contained HTML page (inline CSS, no scripts, no external resources) for people.

The matrix is scenarios x versions. Every cell shows the verdict; a divergent cell shows both sides side
by side, with the exact messages QEMU and the model produced, so a reader does not need the JSON. A cell
whose QEMU logs were kept links to their folder (relative to the page when the page's folder is known,
so the link survives moving results/ as a whole), and says how its QEMUs had to be ended when ``quit``
did not do it.
"""

from __future__ import annotations

import os
import urllib.parse
from html import escape
from pathlib import Path

from contract.outcome import Outcome
from harness.cross_matrix import split_column
from harness.report import Cell, Matrix, build_matrix, cross_cells, plain_columns, summary_line, verdict_text
from harness.results import Results

_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1d1d1f;
       background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; }
h2 { font-size: 1.15em; margin: 1.5em 0 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.meta { color: #555; margin-bottom: 1em; }
.meta code { background: #f3f3f3; padding: 0 .25em; }
.summary span { display: inline-block; padding: .2em .6em; margin-right: .4em; border-radius: 4px;
                font-weight: 600; }
table.matrix { border-collapse: collapse; margin-top: 1em; width: 100%; table-layout: fixed; }
table.matrix th, table.matrix td { border: 1px solid #ccc; padding: .35em .5em; vertical-align: top;
                                   text-align: left; overflow-wrap: anywhere; }
table.matrix thead th { position: sticky; top: 0; background: #2d3748; color: #fff; z-index: 1; }
table.matrix th.scenario { width: 22em; }
td.scenario { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; background: #fafafa; }
td.scenario .desc { font-family: system-ui, sans-serif; color: #666; font-size: 12px; }
.agree { background: #e6f4ea; }
.diverge { background: #fde7e7; }
.known-bug { background: #fff4e0; }
.gone { color: #8a5300; font-weight: bold; }
.known-bug .tag { color: #8a5300; }
.skip { background: #f1f1f1; color: #555; }
.error, .not-run { background: #fff1d6; }
.environment { background: #e8e4f3; }
.environment .tag { color: #4b3a8c; }
.logs a { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
.shutdown { color: #8a5300; }
.outcome { background: #eef3fb; }
.tag { font-weight: 700; }
.agree .tag { color: #1e7a34; }
.diverge .tag { color: #b3261e; }
.error .tag, .not-run .tag { color: #9a5b00; }
.msg { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; color: #333; }
table.sides { border-collapse: collapse; width: 100%; margin-top: .3em; table-layout: fixed; }
table.sides th, table.sides td { border: 1px solid #e0b4b4; padding: .2em .35em; font-size: 12px;
                                 vertical-align: top; overflow-wrap: anywhere; }
table.sides th { background: #f8d7d7; color: #1d1d1f; }
table.sides td.field { width: 9em; font-weight: 600; }
table.sides td { font-family: ui-monospace, "DejaVu Sans Mono", monospace; background: #fff; }
pre { white-space: pre-wrap; margin: .2em 0; font-size: 12px; }
.jump a { display: inline-block; margin: .15em .3em .15em 0; padding: 0 .4em; border-radius: 3px;
          font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; text-decoration: none;
          color: #1d1d1f; }
"""

_SUMMARY_COLOURS = {
    "agree": ("#1e7a34", "#e6f4ea"),
    "diverge": ("#b3261e", "#fde7e7"),
    "known-bug": ("#8a5300", "#fff4e0"),
    "skip": ("#555", "#f1f1f1"),
    "not-modelled": ("#5a4a00", "#f7f1d0"),
    "error": ("#9a5b00", "#fff1d6"),
    "environment": ("#4b3a8c", "#e8e4f3"),
    "not-run": ("#9a5b00", "#fff1d6"),
    "outcome": ("#2b4c7e", "#eef3fb"),
}


def _text(value: object) -> str:
    return escape("null" if value is None else str(value))


def _vm(outcome: Outcome, side: str) -> str:
    state = outcome.source if side == "source" else outcome.destination
    return "null" if state is None else f"{state.status} / {state.runstate}"


def _outcome_lines(outcome: Outcome) -> str:
    parts = [f'<div class="msg">{escape(verdict_text(outcome))}</div>']
    if outcome.error:
        parts.append(f'<div class="msg">{escape(outcome.error)}</div>')
    return "".join(parts)


def _sides_table(cell: Cell) -> str:
    ref, qemu = cell.reference, cell.qemu
    rows = ['<table class="sides"><tr><th class="field">field</th><th>reference</th><th>qemu</th></tr>']
    differences = cell.comparison.differences if cell.comparison else {}
    for name, (ref_value, qemu_value) in differences.items():
        if name == "error" and ref is not None and qemu is not None:
            ref_value, qemu_value = ref.error, qemu.error  # the exact messages, not the normalised ones
        rows.append(
            f'<tr><td class="field">{escape(name)}</td><td>{_text(ref_value)}</td><td>{_text(qemu_value)}</td></tr>'
        )
    if ref is not None and qemu is not None:
        for name, ref_value, qemu_value in (
            ("verdict", verdict_text(ref), verdict_text(qemu)),
            ("error", ref.error, qemu.error),
            ("source", _vm(ref, "source"), _vm(qemu, "source")),
            ("destination", _vm(ref, "destination"), _vm(qemu, "destination")),
        ):
            if not any(k == name or k.startswith(name + ".") for k in differences):
                rows.append(
                    f'<tr><td class="field">{escape(name)} (same)</td><td>{_text(ref_value)}</td>'
                    f"<td>{_text(qemu_value)}</td></tr>"
                )
    rows.append("</table>")
    return "".join(rows)


def logs_href(logs: str, base: Path | None) -> str:
    """The link to a logs folder: relative to the page's folder when known (and on the same drive), else
    a file: URI."""
    path = Path(logs)
    if base is not None:
        try:
            relative = os.path.relpath(path, base.resolve())
        except ValueError:
            relative = None
        if relative is not None:
            return urllib.parse.quote(Path(relative).as_posix()) + "/"
    return path.as_uri() + "/" if path.is_absolute() else urllib.parse.quote(path.as_posix()) + "/"


def _extras(cell: Cell, base: Path | None) -> str:
    parts = [
        f'<div class="msg shutdown">shutdown ({escape(side)}): {escape(note)}</div>'
        for side, note in cell.shutdown.items()
    ]
    if cell.logs:
        href = escape(logs_href(cell.logs, base), quote=True)
        parts.append(f'<div class="logs"><a href="{href}" title="{escape(cell.logs, quote=True)}">QEMU logs</a></div>')
    return "".join(parts)


def _cell_html(cell: Cell | None, base: Path | None = None) -> str:
    if cell is None:
        return '<td class="skip">-</td>'
    html = _cell_body(cell)
    extras = _extras(cell, base)
    return html[: -len("</td>")] + extras + "</td>" if extras else html


def _cell_body(cell: Cell) -> str:
    kind = cell.kind
    if kind == "agree":
        outcome = cell.qemu or cell.reference
        body = _outcome_lines(outcome) if outcome else ""
        if cell.known_bug_gone:
            body = f'<div class="gone">{escape(cell.known_bug_gone)}</div>{body}'
        return f'<td class="agree"><span class="tag">agree</span>{body}</td>'
    if kind == "diverge":
        return f'<td class="diverge"><span class="tag">DIVERGE</span>{_sides_table(cell)}</td>'
    if kind == "known-bug":
        reason = escape(cell.comparison.known_bug or "") if cell.comparison else ""
        return (
            f'<td class="known-bug"><span class="tag">known QEMU bug</span><div class="msg">{reason}</div>'
            f"{_sides_table(cell)}</td>"
        )
    if kind == "not-modelled":
        return (
            f'<td class="skip"><span class="tag">not modelled</span><div class="msg">{escape(cell.detail)}</div>'
            f'<div class="msg">qemu: {escape(verdict_text(cell.qemu)) if cell.qemu else "-"}</div></td>'
        )
    if kind == "skip":
        return f'<td class="skip"><span class="tag">skip</span><div class="msg">{escape(cell.detail)}</div></td>'
    if kind in ("error", "environment", "not-run"):
        label = {"error": "error", "environment": "environment error", "not-run": "not run"}[kind]
        return f'<td class="{kind}"><span class="tag">{label}</span><pre>{escape(cell.detail)}</pre></td>'
    parts = []
    for name, outcome in (("qemu", cell.qemu), ("reference", cell.reference)):
        if outcome is not None:
            parts.append(f"<div><b>{name}</b>{_outcome_lines(outcome)}</div>")
    return f'<td class="outcome">{"".join(parts)}</td>'


def _meta_html(results: Results) -> str:
    meta = results.meta
    items = []
    for b in meta.get("binaries") or []:
        if isinstance(b, dict):
            items.append(f"<code>{escape(str(b.get('path')))}</code> ({escape(str(b.get('version')))})")
    lines = []
    if items:
        lines.append("binaries: " + ", ".join(items))
    keys = ("backend", "host", "kernel", "start", "end", "jobs", "logs_dir")
    facts = [f"{key}: {escape(str(meta[key]))}" for key in keys if key in meta]
    if facts:
        lines.append(" · ".join(facts))
    return "<br>".join(lines)


def _fuzz_html(results: Results) -> str:
    """``migconform fuzz`` results (``meta.fuzz``, harness.fuzz.command): the counts and each found file."""
    fuzz = results.meta.get("fuzz")
    if not isinstance(fuzz, dict):
        return ""
    total = fuzz.get("total") or {}
    seeds = ", ".join(str(s) for s in fuzz.get("seeds") or [])
    facts = {"sequences": "sequences", "steps": "steps", "steps_per_minute": "steps/min", "divergences": "divergences"}
    facts["not_modelled"] = "not modelled"
    line = f"fuzz (seeds {escape(seeds)}): " + ", ".join(f"{escape(str(total.get(k)))} {v}" for k, v in facts.items())
    found = [d for w in fuzz.get("workers") or [] for d in w.get("divergences") or []]
    items = "".join(
        f"<li><code>{escape(str(d.get('file')))}</code> ({escape(str(d.get('steps')))} steps)</li>" for d in found
    )
    return f'<div class="meta"><b>{line}</b><ul>{items}</ul></div>'


def _jump_list(matrix: Matrix) -> str:
    """Links to the rows that need attention: with hundreds of rows, divergences are otherwise hard to find."""
    links = []
    for scenario in matrix.scenarios:
        for column in matrix.columns:
            cell = matrix.cell(scenario, column)
            attention = ("diverge", "error", "environment", "not-run")
            if cell is not None and (cell.kind in attention or cell.known_bug_gone):
                label = f"{scenario} [{column}]"
                kind = cell.kind if not cell.known_bug_gone else "known-bug"
                anchor = f"cross-{scenario}" if split_column(column) is not None else scenario
                links.append(f'<a class="{kind}" href="#{escape(anchor)}">{escape(label)}</a>')
    if not links:
        return ""
    return f'<p class="jump"><b>attention:</b> {" ".join(links)}</p>'


def _cross_html(matrix: Matrix, descriptions: dict[str, str], base: Path | None) -> str:
    """A table per cross-version scenario: a row per source version, a column per destination version."""
    parts = []
    for scenario, (sources, destinations, cells) in cross_cells(matrix).items():
        desc = descriptions.get(scenario, "")
        head = "".join(f"<th>to {escape(d)}</th>" for d in destinations)
        rows = "".join(
            f'<tr><td class="scenario">from {escape(s)}</td>'
            + "".join(_cell_html(cells.get((s, d)), base) for d in destinations)
            + "</tr>"
            for s in sources
        )
        parts.append(
            f'<h2 id="cross-{escape(scenario)}">{escape(scenario)} <small>(cross-version)</small></h2>'
            + (f'<p class="meta">{escape(desc)}</p>' if desc else "")
            + f'<table class="matrix cross"><thead><tr><th class="scenario">source \\ destination</th>{head}'
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    return "".join(parts)


def render(
    results: Results, matrix: Matrix | None = None, title: str = "migconform results", base: Path | None = None
) -> str:
    """The page; ``base`` is the folder it will be written to (for relative links to kept logs)."""
    matrix = matrix or build_matrix(results)
    counts = matrix.counts()
    badges = []
    for kind, count in counts.items():
        if count or kind in ("agree", "diverge", "skip"):
            fg, bg = _SUMMARY_COLOURS[kind]
            badges.append(f'<span style="color:{fg};background:{bg}">{count} {escape(kind)}</span>')
    descriptions = {str(k): str(v) for k, v in dict(results.meta.get("descriptions") or {}).items()}
    columns = plain_columns(matrix)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = []
    for scenario in matrix.scenarios:
        if not any((scenario, c) in matrix.cells for c in columns):
            continue  # cross-version items only: its square below
        desc = descriptions.get(scenario, "")
        desc_html = f'<div class="desc">{escape(desc)}</div>' if desc else ""
        cells = "".join(_cell_html(matrix.cell(scenario, c), base) for c in columns)
        rows.append(f'<tr id="{escape(scenario)}"><td class="scenario">{escape(scenario)}{desc_html}</td>{cells}</tr>')
    table = (
        f'<table class="matrix"><thead><tr><th class="scenario">scenario</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<div class="meta">{_meta_html(results)}</div>'
        f"{_fuzz_html(results)}"
        f'<div class="summary">{"".join(badges)}</div>'
        f'<p class="meta">{escape(summary_line(matrix))}</p>'
        f"{_jump_list(matrix)}"
        f"{table}{_cross_html(matrix, descriptions, base)}"
        "</body></html>\n"
    )
