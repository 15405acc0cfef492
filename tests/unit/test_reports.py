"""Console, JUnit and HTML renderings of the same results."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from harness.compare import compare
from harness.report import build_matrix, console, html, junit
from harness.results import HarnessError, Results, Skip, WorkItem
from reference_impl.outcome import Outcome, VmState

QEMU_MSG = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001: VFIO migration is not supported with postcopy migration"


def sample() -> Results:
    res = Results(meta={"versions": ["7.2.22", "10.0.2"], "descriptions": {"pc-vfio": "postcopy <with> vfio"}})
    for version in ("7.2.22", "10.0.2"):
        ref = Outcome("plain", "reference", version, "completed", source=VmState("completed", "postmigrate"))
        qemu = Outcome("plain", "qemu", version, "completed", source=VmState("completed", "postmigrate"))
        res.outcomes += [ref, qemu]
        res.comparisons.append(compare(ref, qemu))
    ref = Outcome("pc-vfio", "reference", "10.0.2", "completed", source=VmState("completed", "postmigrate"))
    qemu = Outcome("pc-vfio", "qemu", "10.0.2", "refused", stage="migrate", error=QEMU_MSG,
                   source=VmState("none", "running"))  # fmt: skip
    res.outcomes += [ref, qemu]
    res.comparisons.append(compare(ref, qemu))
    res.skips.append(Skip("pc-vfio", "7.2.22", "qemu: requires vfio: no VFIO provider"))
    res.errors.append(HarnessError("broken", "10.0.2", "qemu", "RuntimeError: executor crashed"))
    res.not_run.append(WorkItem("late", "10.0.2"))
    return res


def test_matrix_cells() -> None:
    m = build_matrix(sample())
    assert m.columns == ["7.2.22", "10.0.2"]
    assert m.scenarios == ["broken", "late", "pc-vfio", "plain"]
    kinds = {key: cell.kind for key, cell in m.cells.items()}
    assert kinds[("plain", "7.2.22")] == "agree"
    assert kinds[("pc-vfio", "10.0.2")] == "diverge"
    assert kinds[("pc-vfio", "7.2.22")] == "skip"
    assert kinds[("broken", "10.0.2")] == "error"
    assert kinds[("late", "10.0.2")] == "not-run"
    assert m.counts()["agree"] == 2


def test_console_table_and_details() -> None:
    text = console.render(sample())
    lines = text.splitlines()
    assert lines[0].split() == ["scenario", "7.2.22", "10.0.2"]
    row = next(line for line in lines if line.startswith("pc-vfio"))
    assert "skip(qemu: requires vfio" in row and "DIVERGE" in row
    assert f"qemu:      {QEMU_MSG}" in text
    assert "RuntimeError: executor crashed" in text
    assert lines[-1] == "2 agree, 1 diverge, 1 skipped, 1 errors, 1 not run"


def test_junit_one_testcase_per_cell() -> None:
    root = ET.fromstring(junit.render(sample()))
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert len(cases) == 6 and suite.get("tests") == "6" and suite.get("failures") == "1"
    failure = cases["pc-vfio[10.0.2]"].find("failure")
    assert failure is not None and QEMU_MSG in (failure.text or "") and "completed" in (failure.text or "")
    skipped = cases["pc-vfio[7.2.22]"].find("skipped")
    assert skipped is not None and skipped.get("message") == "qemu: requires vfio: no VFIO provider"
    assert cases["broken[10.0.2]"].find("error") is not None
    assert cases["late[10.0.2]"].find("error") is not None
    assert cases["plain[10.0.2]"].find("failure") is None


def test_html_is_self_contained_and_shows_both_sides() -> None:
    page = html.render(sample())
    assert page.startswith("<!DOCTYPE html>")
    for forbidden in ("<script", "<link", "http://", "https://", "src="):
        assert forbidden not in page
    for scenario in ("plain", "pc-vfio", "broken", "late"):
        assert f'id="{scenario}"' in page
    assert QEMU_MSG in page  # the exact message, not the normalised one
    assert "postcopy &lt;with&gt; vfio" in page  # escaped
    assert page.count('<td class="diverge"') == 1
    assert '<a class="diverge" href="#pc-vfio">' in page  # the attention list links to the row
    ET.fromstring(page.split("<body>", 1)[1].rsplit("</body>", 1)[0].join(["<body>", "</body>"]))
