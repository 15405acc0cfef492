"""Optional features on real QEMU: the probe lists what each binary was built with, and a scenario needing what
a binary lacks is skipped with the reason before any QEMU of it starts, while it runs on a binary that has it.
Which binary lacks what is probed, never assumed (here: the 10.2.2 build has no slirp, Debian's QEMUs do)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from contract.scenario import VmSpec
from harness.binaries import QemuBinary
from harness.executor import run_scenario
from harness.loader import load_scenario
from harness.probe import probe_binary
from harness.suite import SUITE_DIR

NETDEV_USER = Path(SUITE_DIR) / "precopy-netdev-user.toml"


def test_probe_lists_the_features_the_build_has(qemu_binary: QemuBinary) -> None:
    offered = probe_binary(qemu_binary).offered
    assert offered is not None
    assert offered.netdevs is not None and "socket" in offered.netdevs  # built in whatever the configuration
    assert offered.block_drivers is not None and "file" in offered.block_drivers
    assert "chardev-null" in offered.types and "tcg-accel" in offered.types


def test_a_scenario_needing_a_netdev_the_build_lacks_skips_with_the_reason(
    qemu_binary: QemuBinary, tmp_path: Path
) -> None:
    offered = probe_binary(qemu_binary).offered
    assert offered is not None and offered.netdevs is not None
    outcome = run_scenario(load_scenario(NETDEV_USER), qemu_binary, workdir=tmp_path / "work", timeout=30.0)
    if "user" in offered.netdevs:
        assert outcome.verdict == "completed", outcome
    else:
        assert outcome.verdict == "skipped"
        assert outcome.skip_reason == "this QEMU has no user netdev backend (needed by [source] args -netdev)"
        assert outcome.source is None  # decided before any QEMU of the scenario started


def test_a_chardev_the_build_lacks_is_named(qemu_binary: QemuBinary, tmp_path: Path) -> None:
    offered = probe_binary(qemu_binary).offered
    assert offered is not None
    if "chardev-spicevmc" in offered.types:
        pytest.skip(f"QEMU {qemu_binary.version} has the spicevmc chardev (spice): nothing lacking to show")
    scenario = replace(load_scenario(NETDEV_USER), source=VmSpec(args=("-chardev", "spicevmc,id=c0,name=vdagent")))
    outcome = run_scenario(scenario, qemu_binary, workdir=tmp_path / "work", timeout=30.0)
    assert outcome.verdict == "skipped"
    assert outcome.skip_reason == "this QEMU has no spicevmc chardev (needed by [source] args -chardev)"
