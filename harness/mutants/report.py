"""A :class:`harness.mutants.verdicts.MutationReport` for people: the console summary and the HTML section
added above the scenario matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.mutants.verdicts import MutationReport


def render_console(report: MutationReport) -> str:
    lines = [f"mutation check: QEMU {report.qemu_version} from {report.source}"]
    if report.valid:
        lines.append(f"unmodified build: agrees with the model on all {report.unmodified_compared} compared scenarios")
    else:
        lines.append(
            f"unmodified build: {len(report.false_alarms)} FALSE ALARM(S), "
            f"{len(report.unmodified_errors)} error(s) in {report.unmodified_compared} compared scenarios"
        )
        for f in report.false_alarms:
            lines.append(f"  false alarm {f.scenario}: {_diff_text(f.differences)}")
        for e in report.unmodified_errors:
            lines.append(f"  error {e['scenario']} ({e['backend']}): {e['error']}")
    width = max([len(m.name) for m in report.mutants] + [6])
    for m in report.mutants:
        head = f"{m.name:<{width}}  {m.status.upper():<11}"
        if m.status == "killed":
            head += " by " + ", ".join(k.scenario for k in m.killed_by)
        elif m.status == "survived":
            head += f" ({m.compared} scenarios agree with the model)"
        else:
            head += f" (no scenario could be compared; {m.skipped} skipped)"
        lines.append(head)
        for k in m.killed_by:
            lines.append(f"    {k.scenario}: {_diff_text(k.differences)}")
        for e in m.errors:
            lines.append(f"    error {e['scenario']} ({e['backend']}): {e['error']}")
        if m.masked:
            lines.append("    not counted (the unmodified build diverges there too): " + ", ".join(m.masked))
    lines.append(
        f"killed {report.killed}/{len(report.mutants)}"
        + ("" if report.valid else " (INVALID: the unmodified build does not agree with the model)")
    )
    return "\n".join(lines) + "\n"


def render_html(report: MutationReport, results: Any) -> str:
    """The standard HTML report of the run, with the mutation summary above the scenario matrix."""
    from html import escape

    from harness.report import html

    page = html.render(results, title=f"migconform mutation check: QEMU {report.qemu_version}")
    colours = {"killed": "#e6f4ea", "survived": "#fde7e7", "unexercised": "#f1f1f1"}
    rows = []
    for m in report.mutants:
        how = "<br>".join(
            f"<b>{escape(k.scenario)}</b>: {escape(_diff_text(k.differences))}" for k in m.killed_by
        ) or escape(f"{m.compared} compared, {m.skipped} skipped")
        rows.append(
            f'<tr style="background:{colours.get(m.status, "#fff")}"><td><code>{escape(m.name)}</code>'
            f'<div class="desc">{escape(m.description)}</div></td><td class="tag">{escape(m.status)}</td>'
            f'<td class="msg">{how}</td></tr>'
        )
    verdict = (
        f"unmodified build agrees with the model on all {report.unmodified_compared} compared scenarios"
        if report.valid
        else f"INVALID: the unmodified build diverges from the model on "
        f"{', '.join(f.scenario for f in report.false_alarms) or 'nothing'}"
        f" and has {len(report.unmodified_errors)} harness error(s)"
    )
    section = (
        f'<h2>Mutants: killed {report.killed}/{len(report.mutants)}</h2><p class="meta">{escape(verdict)}. '
        f"Columns below: <code>{escape(report.qemu_version)} NAME</code> is the build with that patch.</p>"
        '<table class="matrix"><thead><tr><th class="scenario">mutant</th><th style="width:7em">status</th>'
        f"<th>killed by (model vs QEMU)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return page.replace('<div class="summary">', section + '<h2>Scenarios</h2><div class="summary">', 1)


def _diff_text(differences: Mapping[str, Sequence[Any]]) -> str:
    return "; ".join(f"{k}: model {ref!r}, qemu {got!r}" for k, (ref, got) in differences.items())
