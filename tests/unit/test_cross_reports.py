"""Reports of cross-version items: a source x destination square per scenario (console, HTML, JSON), both
versions on each JUnit testcase, and merge keeping every pair apart."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from contract.outcome import Outcome, VmState
from harness import cli
from harness.compare import compare
from harness.report import console, html, junit
from harness.results import Results, Skip, load, save


def _pair(scenario: str, source: str, destination: str, *, agree: bool = True) -> tuple[list[Outcome], object]:
    column = f"{source}->{destination}"
    outcomes = []
    for backend in ("qemu", "reference"):
        verdict = "refused" if backend == "qemu" and not agree else "completed"
        states = {"source": VmState("completed", "postmigrate"), "destination": VmState("completed", "running")}
        outcome = Outcome(scenario, backend, source, verdict, destination_qemu_version=destination, **states)
        outcome.extra["column"] = column
        outcomes.append(outcome)
    return outcomes, compare(outcomes[1], outcomes[0], column=column)


def _results() -> Results:
    res = Results(meta={"versions": ["7.2.22", "10.0.2"]})
    for source, destination, agree in (("7.2.22", "10.0.2", True), ("10.0.2", "7.2.22", False)):
        outcomes, comparison = _pair("x", source, destination, agree=agree)
        res.outcomes += outcomes
        res.comparisons.append(comparison)  # type: ignore[arg-type]
    plain, comparison = _pair("plain", "10.0.2", "10.0.2")
    for outcome in plain:
        outcome.destination_qemu_version = None
        outcome.extra.pop("column")
    res.outcomes += plain
    res.comparisons.append(compare(plain[1], plain[0]))
    res.skips.append(Skip("y", "7.2->10.0.2", "[source] qemu = '7.2': no QEMU 7.2 found (found: 10.0.2)", "host"))
    return res


def test_console_draws_a_square_per_cross_scenario_and_keeps_the_plain_table() -> None:
    text = console.render(_results())
    lines = text.splitlines()
    assert lines[0].split() == ["scenario", "10.0.2"] and lines[2].split() == ["plain", "agree"]
    square = lines[lines.index("x (cross-version)") :]
    assert square[1].split() == ["source", "\\", "destination", "7.2.22", "10.0.2"]
    assert square[3].split() == ["7.2.22", "-", "agree"] and square[4].split() == ["10.0.2", "DIVERGE", "-"]
    assert "DIVERGE x [10.0.2->7.2.22]" in text and "y (cross-version)" in text


def test_html_has_a_table_per_cross_scenario_with_verdict_cells() -> None:
    page = html.render(_results())
    root = ET.fromstring(
        page.split("<body>", 1)[1].replace("</html>\n", "").removesuffix("</body>").join(["<b>", "</b>"])
    )
    tables = root.findall(".//table[@class='matrix cross']")
    assert len(tables) == 2  # x and y
    x = tables[0]
    head = [th.text for th in x.findall("./thead/tr/th")]
    assert head == ["source \\ destination", "to 7.2.22", "to 10.0.2"]
    rows = x.findall("./tbody/tr")
    assert [td.get("class") for td in rows[0].findall("td")] == ["scenario", "skip", "agree"]
    assert [td.get("class") for td in rows[1].findall("td")] == ["scenario", "diverge", "skip"]
    # the main table holds the plain scenario only
    (main,) = root.findall(".//table[@class='matrix']")
    assert [tr.get("id") for tr in main.findall("./tbody/tr")] == ["plain"]
    assert 'href="#cross-x"' in page  # the attention list links to the square


def test_json_carries_the_square_and_junit_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    save(_results(), path)
    data = json.loads(path.read_text())
    assert data["cross"] == {
        "x": {"7.2.22": {"10.0.2": "agree"}, "10.0.2": {"7.2.22": "diverge"}},
        "y": {"7.2": {"10.0.2": "skip"}},
    }
    assert load(path).to_json()["cross"] == data["cross"]
    suite = ET.fromstring(junit.render(load(path)))
    case = suite.find(".//testcase[@name='x[10.0.2->7.2.22]']")
    assert case is not None and case.find("failure") is not None
    props = {p.get("name"): p.get("value") for p in case.findall("./properties/property")}
    assert props == {"source-qemu": "10.0.2", "destination-qemu": "7.2.22"}


def test_merge_keeps_cross_items_apart_from_same_version_ones(tmp_path: Path) -> None:
    first, second = (
        _results(),
        Results(meta={"versions": ["10.0.2"], "cross": {"7.2.22->10.0.2": ["7.2.22", "10.0.2"]}}),
    )
    outcomes, comparison = _pair("x", "7.2.22", "10.0.2")
    second.outcomes += outcomes
    second.comparisons.append(comparison)  # type: ignore[arg-type]
    save(first, tmp_path / "a.json")
    save(second, tmp_path / "b.json")
    merged = tmp_path / "m.json"
    cli.main(["merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(merged)])
    data = json.loads(merged.read_text())
    columns = sorted((c["scenario"], c.get("column") or c["qemu_version"]) for c in data["comparisons"])
    assert columns == [("plain", "10.0.2"), ("x", "10.0.2->7.2.22"), ("x", "7.2.22->10.0.2")]
    assert data["meta"]["cross"] == {"7.2.22->10.0.2": ["7.2.22", "10.0.2"]}
