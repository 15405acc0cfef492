"""Cross-version items on real QEMU: 7.2 -> 10.0 and 10.0 -> 7.2, each side its own binary (each side's
``query-version`` says which QEMU answered), through the executor and through ``migconform run --cross``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.scenario import Scenario, Step, VmSpec
from harness import cli
from harness.binaries import QemuBinary, discover_binaries
from harness.executor import run_scenario

_FOUND = discover_binaries()


def _binary(prefix: str) -> QemuBinary:
    for binary in _FOUND:
        if str(binary.version).startswith(prefix + "."):
            return binary
    found = ", ".join(str(b.version) for b in _FOUND) or "none"
    pytest.skip(f"needs QEMU {prefix} (found: {found}; scripts/setup.sh installs 7.2 and 10.0)")


def _tiny() -> Scenario:
    """A firmware-only VM on the one machine type both versions have, precopy over tcp, and each
    side's query-version before the migration."""
    vm = VmSpec(machine="pc-q35-7.2", memory="64M")
    steps = (
        Step("qmp", "source", command="query-version"),
        Step("qmp", "destination", command="query-version"),
        Step("migrate", "source", transport="tcp"),
        Step("wait", "source"),
    )
    return Scenario(id="cross-tiny", source=vm, destination=vm, steps=steps)


@pytest.mark.parametrize(("source", "destination"), [("7.2", "10.0"), ("10.0", "7.2")])
def test_a_tiny_migration_across_versions(source: str, destination: str, tmp_path: Path) -> None:
    src, dst = _binary(source), _binary(destination)
    outcome = run_scenario(_tiny(), src, workdir=tmp_path, destination_binary=dst)
    assert (outcome.verdict, outcome.error) == ("completed", None)
    assert outcome.source is not None and outcome.destination is not None
    assert (outcome.source.status, outcome.source.runstate) == ("completed", "postmigrate")
    assert (outcome.destination.status, outcome.destination.runstate) == ("completed", "running")
    assert (outcome.qemu_version, outcome.destination_qemu_version) == (str(src.version), str(dst.version))
    answered = {entry["side"]: entry["return"]["qemu"] for entry in outcome.extra["qmp"]}
    for side, binary in (("source", src), ("destination", dst)):
        version = answered[side]
        assert f"{version['major']}.{version['minor']}.{version['micro']}" == str(binary.version)


def test_run_cross_records_both_versions(tmp_path: Path) -> None:
    seven, ten = _binary("7.2"), _binary("10.0")
    path = tmp_path / "tiny.toml"
    path.write_text('[vm]\nmachine = "pc-q35-7.2"\nmemory = "64M"\n[migration]\ntransport = "tcp"\n')
    out = tmp_path / "r.json"
    argv = ["run", str(path), "--cross", "--qemu", seven.path, "--qemu", ten.path, "--backend", "qemu"]
    assert cli.main([*argv, "--quiet", "--jobs", "2", "--json", str(out), "--keep-logs", "none"]) == 0
    data = json.loads(out.read_text())
    seen = {(o["qemu_version"], o["destination_qemu_version"], o["verdict"]) for o in data["outcomes"]}
    assert seen == {
        (str(seven.version), str(ten.version), "completed"),
        (str(ten.version), str(seven.version), "completed"),
    }
    assert data["meta"]["cross"] == {
        f"{seven.version}->{ten.version}": [str(seven.version), str(ten.version)],
        f"{ten.version}->{seven.version}": [str(ten.version), str(seven.version)],
    }
