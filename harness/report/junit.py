"""JUnit XML for CI systems: one testcase per scenario x version.

A divergence is a ``failure`` whose text shows both sides' exact messages; a harness error or an item an
interrupted run never finished is an ``error`` (``type`` ``harness`` or ``not-run``), a host failure an
``error`` of type ``environment``; a skip carries its reason. A known QEMU bug is a ``skipped`` of type
``known-qemu-bug``; a known bug that no longer reproduces passes (QEMU is right) with a ``known-bug-gone``
property and its message in ``system-out``. An item whose logs were kept has a ``logs`` property and a
``logs:`` line in its system-out; a QEMU that ``quit`` did not end, a ``shutdown`` line there too. A
cross-version item ("7.2.22->10.0.2") has ``source-qemu`` and ``destination-qemu`` properties.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from contract.outcome import Outcome
from harness.cross_matrix import split_column
from harness.report import Cell, Matrix, build_matrix, verdict_text
from harness.results import Results


def _side(outcome: Outcome | None) -> str:
    if outcome is None:
        return "(no outcome)"
    src = outcome.source.to_json() if outcome.source else None
    dst = outcome.destination.to_json() if outcome.destination else None
    return f"{verdict_text(outcome)}\n    error: {outcome.error}\n    source: {src}\n    destination: {dst}"


def _failure_text(cell: Cell) -> str:
    lines = ["differences (field: reference | qemu):"]
    if cell.comparison is not None:
        for name, (ref, qemu) in cell.comparison.differences.items():
            lines.append(f"  {name}: {ref} | {qemu}")
    lines.append(f"reference: {_side(cell.reference)}")
    lines.append(f"qemu:      {_side(cell.qemu)}")
    return "\n".join(lines)


def render(results: Results, matrix: Matrix | None = None, suite_name: str = "migconform") -> str:
    matrix = matrix or build_matrix(results)
    counts = matrix.counts()
    suites = ET.Element("testsuites", name=suite_name)
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=suite_name,
        tests=str(len(matrix.cells)),
        failures=str(counts["diverge"]),
        errors=str(counts["error"] + counts["environment"] + counts["not-run"]),
        skipped=str(counts["skip"] + counts["known-bug"] + counts["not-modelled"]),
    )
    if results.meta.get("start"):
        suite.set("timestamp", str(results.meta["start"]))
    for scenario in matrix.scenarios:
        for column in matrix.columns:
            cell = matrix.cell(scenario, column)
            if cell is None:
                continue
            case = ET.SubElement(suite, "testcase", classname=f"{suite_name}.{column}", name=f"{scenario}[{column}]")
            durations = [o.duration_s for o in (cell.reference, cell.qemu) if o is not None and o.duration_s]
            if durations:
                case.set("time", f"{sum(durations):.3f}")
            if cell.kind == "diverge":
                message = ", ".join(cell.comparison.differences) if cell.comparison else "diverged"
                failure = ET.SubElement(case, "failure", message=f"diverges in {message}", type="divergence")
                failure.text = _failure_text(cell)
            elif cell.kind == "skip":
                ET.SubElement(case, "skipped", message=cell.detail)
            elif cell.kind == "not-modelled":
                ET.SubElement(case, "skipped", message=f"not modelled: {cell.detail}", type="not-modelled")
            elif cell.kind == "known-bug":
                # JUnit has no expected failure: a skip whose type says why, with both sides in the text.
                reason = cell.comparison.known_bug if cell.comparison else "known QEMU bug"
                known = ET.SubElement(case, "skipped", message=f"known QEMU bug: {reason}", type="known-qemu-bug")
                known.text = _failure_text(cell)
            elif cell.kind in ("error", "environment"):
                message = cell.detail.splitlines()[0] if cell.detail else "error"
                kind = "environment" if cell.kind == "environment" else "harness"
                error = ET.SubElement(case, "error", message=message, type=kind)
                error.text = cell.detail
            elif cell.kind == "not-run":
                ET.SubElement(case, "error", message=f"not run: {cell.detail}", type="not-run")
            lines = []
            if cell.known_bug_gone:
                lines.append(cell.known_bug_gone)
            if cell.kind == "outcome":
                lines.append(f"reference: {_side(cell.reference)}\nqemu:      {_side(cell.qemu)}")
            lines.extend(f"shutdown ({side}): {note}" for side, note in cell.shutdown.items())
            # Properties come first in a testcase (the JUnit schema's order), system-out last.
            properties = ET.Element("properties")
            pair = split_column(column)
            if pair is not None:  # a cross-version item: CI can pivot on the two versions
                ET.SubElement(properties, "property", name="source-qemu", value=pair[0])
                ET.SubElement(properties, "property", name="destination-qemu", value=pair[1])
            if cell.known_bug_gone:
                ET.SubElement(properties, "property", name="known-bug-gone", value=cell.known_bug_gone)
            if cell.logs:
                ET.SubElement(properties, "property", name="logs", value=cell.logs)
                lines.append(f"logs: {cell.logs}")
            if len(properties):
                case.insert(0, properties)
            if lines:
                ET.SubElement(case, "system-out").text = "\n".join(lines)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
