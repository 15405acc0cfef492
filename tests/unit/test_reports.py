"""Console, JUnit and HTML renderings of the same results."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from contract.outcome import Outcome, VmState
from harness.compare import compare
from harness.report import build_matrix, console, html, junit
from harness.results import ErrorRecord, Results, Skip, WorkItem

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
    res.errors.append(ErrorRecord("broken", "10.0.2", "qemu", "RuntimeError: executor crashed"))
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


def with_logs_and_shutdown() -> Results:
    res = sample()
    for outcome in res.outcomes:
        if outcome.scenario == "pc-vfio" and outcome.backend == "qemu":
            outcome.logs = "/srv/results/logs/pc-vfio__10.0.2"
            outcome.extra["shutdown"] = {"source": "did not exit within 1.5 s of quit, ... needed SIGKILL"}
        if outcome.scenario == "plain" and outcome.backend == "qemu" and outcome.qemu_version == "10.0.2":
            outcome.extra["shutdown"] = {"destination": "did not exit within 1.5 s of quit; ended by SIGTERM"}
    res.errors.append(ErrorRecord("nomem", "10.0.2", "qemu", "HostResourceExhausted: ENOMEM", kind="environment",
                                   logs="/srv/results/logs/nomem__10.0.2"))  # fmt: skip
    res.meta["logs_dir"] = "/srv/results/logs"
    return res


def test_environment_errors_are_their_own_category() -> None:
    res = with_logs_and_shutdown()
    m = build_matrix(res)
    assert m.cells[("nomem", "10.0.2")].kind == "environment"
    assert m.cells[("broken", "10.0.2")].kind == "error"
    assert m.counts()["environment"] == 1 and m.counts()["error"] == 1
    suite = ET.fromstring(junit.render(res)).find("testsuite")
    assert suite is not None and suite.get("errors") == "3"  # harness error, environment error, not run
    types = {case.get("name"): case.find("error").get("type") for case in suite if case.find("error") is not None}  # type: ignore[union-attr]
    assert types == {"nomem[10.0.2]": "environment", "broken[10.0.2]": "harness", "late[10.0.2]": "not-run"}
    text = console.render(res)
    assert "ENVIRONMENT ERROR nomem [10.0.2]" in text and "1 errors, 1 environment errors" in text
    page = html.render(res)
    assert '<td class="environment"><span class="tag">environment error</span>' in page
    assert '<span style="color:#4b3a8c;background:#e8e4f3">1 environment</span>' in page


def test_kept_logs_are_linked_and_named_in_the_summary() -> None:
    res = with_logs_and_shutdown()
    text = console.render(res)
    assert "  logs: /srv/results/logs/pc-vfio__10.0.2" in text and "  logs: /srv/results/logs/nomem__10.0.2" in text
    assert text.rstrip().endswith("QEMU logs kept for 2 items under /srv/results/logs")
    assert "QEMU logs kept" not in console.render(sample())
    suite = ET.fromstring(junit.render(res)).find("testsuite")
    assert suite is not None
    cases = {case.get("name"): case for case in suite}
    prop = cases["pc-vfio[10.0.2]"].find("properties/property")
    assert prop is not None and prop.attrib == {"name": "logs", "value": "/srv/results/logs/pc-vfio__10.0.2"}
    assert "logs: /srv/results/logs/nomem__10.0.2" in (cases["nomem[10.0.2]"].findtext("system-out") or "")
    assert cases["plain[7.2.22]"].find("properties") is None
    # Relative to the page's folder when known (results/ moves as a whole), else a file: URI.
    assert '<a href="logs/pc-vfio__10.0.2/"' in html.render(res, base=Path("/srv/results"))
    assert '<a href="file:///srv/results/logs/pc-vfio__10.0.2/"' in html.render(res)


def test_a_qemu_that_needed_more_than_quit_is_shown() -> None:
    res = with_logs_and_shutdown()
    text = console.render(res)
    assert "  shutdown (source): did not exit within 1.5 s of quit, ... needed SIGKILL" in text
    sigterm = "did not exit within 1.5 s of quit; ended by SIGTERM"
    assert f"SHUTDOWN plain [10.0.2]\n  shutdown (destination): {sigterm}" in text
    page = html.render(res)
    sigkill = "did not exit within 1.5 s of quit, ... needed SIGKILL"
    assert f'<div class="msg shutdown">shutdown (source): {sigkill}</div>' in page
    suite = ET.fromstring(junit.render(res)).find("testsuite")
    assert suite is not None
    out = {case.get("name"): case.findtext("system-out") or "" for case in suite}
    assert "shutdown (destination): did not exit within 1.5 s of quit; ended by SIGTERM" in out["plain[10.0.2]"]
