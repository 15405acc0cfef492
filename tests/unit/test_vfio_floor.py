"""The coverage floor: ``--require-all`` and ``--min-compared`` make a run that compared too little fail.

The CLI tests run the real runner with the real model and the real QEMU binaries (the executor probes them
and decides the skip itself); no VFIO provider is given, which is exactly the resource a VFIO scenario
misses on a run that forgot ``--vfio-provider``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness import cli
from harness.binaries import discover_binaries
from harness.compare import Comparison
from harness.execution.preflight import NO_VFIO_PROVIDER
from harness.loader import load_scenarios
from harness.results import HOST_SKIP, RESOURCE_SKIP, Floor, Results, Skip, load
from harness.suite import SUITE_DIR
from harness.targets import host_capable_items, targets_for_binaries

SUITE = SUITE_DIR
BINARIES = discover_binaries()
needs_qemu = pytest.mark.skipif(not BINARIES, reason="no QEMU binary found (QEMU_BINARY, scripts/setup.sh, PATH)")


def _run(tmp_path: Path, *extra: str, scenarios: tuple[str, ...] = ("vfio-precopy-migratable",)) -> tuple[int, dict]:
    folder = tmp_path / "scenarios"
    folder.mkdir(exist_ok=True)
    for name in scenarios:
        shutil.copy(SUITE / f"{name}.toml", folder)
    out = tmp_path / "r.json"
    argv = ["run", str(folder), "--qemu", str(BINARIES[0].path), "--jobs", "1", "--json", str(out), "--quiet"]
    status = cli.main([*argv, *extra])
    return status, json.loads(out.read_text())


@needs_qemu
@pytest.mark.qemu
def test_missing_vfio_provider_fails_under_require_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, data = _run(tmp_path, "--require-all")
    assert status == 1
    assert data["skips"] == [
        {
            "scenario": "vfio-precopy-migratable",
            "column": str(BINARIES[0].version),
            "reason": f"qemu: {NO_VFIO_PROVIDER}",
            "kind": RESOURCE_SKIP,
        }
    ]
    floor = data["meta"]["floor"]
    assert floor["require_all"] is True and floor["held"] is False and floor["compared"] == 0
    assert NO_VFIO_PROVIDER in floor["problems"][0]
    assert "coverage floor not met" in capsys.readouterr().err


@needs_qemu
@pytest.mark.qemu
def test_the_same_run_without_a_floor_passes(tmp_path: Path) -> None:
    """What --require-all changes: without it the skip is allowed (exit 0) and no floor is recorded."""
    status, data = _run(tmp_path)
    assert status == 0
    assert len(data["skips"]) == 1 and "floor" not in data["meta"]


@needs_qemu
@pytest.mark.qemu
def test_min_compared_counts_compared_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # precopy-tcp needs nothing: it is compared; the VFIO one is skipped for want of a provider.
    scenarios = ("vfio-precopy-migratable", "precopy-tcp")
    status, data = _run(tmp_path, "--min-compared", "2", scenarios=scenarios)
    assert status == 1
    assert data["meta"]["floor"]["compared"] == 1
    assert "1 items compared, fewer than the floor of 2" in capsys.readouterr().err
    status, data = _run(tmp_path, "--min-compared", "1", scenarios=scenarios)
    assert status == 0 and data["meta"]["floor"]["held"] is True


@needs_qemu
def test_auto_floor_never_discounts_a_resource() -> None:
    """--min-compared auto discounts only host capabilities: a VFIO scenario counts (a run without a
    provider then falls below it), and so does one that needs nothing."""
    scenarios = load_scenarios([SUITE / "vfio-precopy-migratable.toml", SUITE / "precopy-tcp.toml"])
    capable, lacking = host_capable_items(scenarios, targets_for_binaries(BINARIES[:1]))
    assert (capable, lacking) == (2, [])


def _results(skips: list[Skip], compared: int) -> Results:
    res = Results()
    res.skips = skips
    res.comparisons = [Comparison(f"s{i}", "10.0.2", True) for i in range(compared)]
    return res


def test_floor_logic() -> None:
    host = Skip("a", "10.0.2", "requires KVM: no /dev/kvm", HOST_SKIP)
    lost = Skip("b", "10.0.2", NO_VFIO_PROVIDER, RESOURCE_SKIP)
    assert Floor().problems(_results([host, lost], 0)) == []
    assert Floor(require_all=True).problems(_results([], 3)) == []
    problems = Floor(require_all=True).problems(_results([host], 3))
    assert problems == ["a [10.0.2] was not compared (host): requires KVM: no /dev/kvm"]
    assert Floor(min_compared=3).problems(_results([host], 3)) == []
    (problem,) = Floor(min_compared=4).problems(_results([host, lost], 3))
    assert "3 items compared, fewer than the floor of 4: 2 skipped (1 for a host capability, 1 for a missing" in problem
    res = _results([lost], 3)
    res.floor = Floor(min_compared=4)
    assert not res.passed
    res.floor = Floor(min_compared=3)
    assert res.passed


def test_floor_and_skip_kind_round_trip(tmp_path: Path) -> None:
    res = _results([Skip("a", "10.0.2", "why", HOST_SKIP)], 1)
    res.floor = Floor(require_all=True)
    path = tmp_path / "r.json"
    from harness.results import save

    save(res, path)
    back = load(path)
    assert back.skips[0].kind == HOST_SKIP
    assert back.floor == Floor(require_all=True) and not back.passed
    # Files written before skip kinds existed: an unknown kind counts as a lost resource.
    data = json.loads(path.read_text())
    del data["skips"][0]["kind"]
    assert Results.from_json(data).skips[0].kind == RESOURCE_SKIP
