"""``migconform certify`` without hardware: the mtty lab's mdev devices play the vendor's device.

Each test boots the lab once (harness.vfio_lab.certify_inside), certifies one personality on a small
set of the suite's VFIO scenarios and reads the bundle back: a complete, passing bundle for the
migratable mtty, and a complete, failing one that says why for mdpy (no VFIO migration at all).
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.binaries import QemuBinary
from harness.certify import BUNDLE_HTML, BUNDLE_JSON, BUNDLE_JUNIT, RESULTS_JSON, SYSINFO, add_arguments, main
from harness.vfio_lab.build import LabImage

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

# Small but covering: a completed precopy, the postcopy refusal, enable-migration=off, a vIOMMU
# refusal at startup, and two devices at once.
SCENARIOS = (
    "vfio-precopy-migratable",
    "vfio-postcopy-migratable",
    "vfio-enable-migration-off",
    "vfio-viommu-on",
    "vfio-two-p2p",
)


def _certify(tmp_path: Path, binary: QemuBinary, personality: str) -> tuple[int, dict[str, Any], Path]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / personality
    argv = ["--vfio-provider", "mtty", "--personality", personality, "-o", str(out), "--qemu", str(binary.path)]
    for scenario in SCENARIOS:
        argv += ["--scenario", scenario]
    status = main(parser.parse_args(argv))
    assert (out / BUNDLE_JSON).exists(), f"certify exited {status} without a bundle"
    return status, json.loads((out / BUNDLE_JSON).read_text()), out


def _complete(bundle: dict[str, Any], out: Path, personality: str, binary: QemuBinary) -> None:
    """Every part of the bundle is there and describes the device and this QEMU."""
    assert bundle["personality"] == personality
    assert bundle["provider"] == "mtty-lab"
    assert bundle["kernel"] and bundle["host_facts"]["kernel"] == bundle["kernel"]
    assert [q["version"] for q in bundle["qemu"]] == [str(binary.version)]
    assert len(bundle["devices"]) >= 2
    for device in bundle["devices"]:
        assert device["kind"] == "mdev" and device["iommu_group"] is not None
        assert device["personality"] == personality and not device["problems"]
    assert {r["scenario"] for r in bundle["scenarios"]} == set(SCENARIOS)
    assert (out / SYSINFO / "uname.txt").read_text().startswith("Linux ")
    assert (out / SYSINFO / "dmesg-vfio.txt").exists()
    assert "Certification verdict" in (out / BUNDLE_HTML).read_text()
    suite = ET.parse(out / BUNDLE_JUNIT).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == str(len(SCENARIOS))
    results = json.loads((out / RESULTS_JSON).read_text())
    assert {o["scenario"] for o in results["outcomes"] if o["backend"] == "qemu"} == set(SCENARIOS)


def test_migratable_mtty_passes(tmp_path: Path, lab_image: LabImage, lab_binary: QemuBinary) -> None:
    status, bundle, out = _certify(tmp_path, lab_binary, "migratable")
    _complete(bundle, out, "migratable", lab_binary)
    assert bundle["verdict"] == "pass", bundle["reasons"]
    assert status == 0
    flags = bundle["devices"][0]["features"]
    assert flags["flag_names"] == ["STOP_COPY", "P2P", "PRE_COPY"] and flags["dma_logging"] is True
    assert all(r["result"] == "agree" for r in bundle["scenarios"]), bundle["scenarios"]
    precopy = next(r for r in bundle["scenarios"] if r["scenario"] == "vfio-precopy-migratable")
    assert precopy["qemu"] == "completed"


def test_mdpy_fails_with_reasons(tmp_path: Path, lab_image: LabImage, lab_binary: QemuBinary) -> None:
    status, bundle, out = _certify(tmp_path, lab_binary, "no-migration")
    _complete(bundle, out, "no-migration", lab_binary)
    assert bundle["verdict"] == "fail" and status == 1
    assert bundle["devices"][0]["features"]["flags"] is None
    # QEMU gates the device as the model says: every scenario agrees; the device itself fails.
    assert all(r["result"] == "agree" for r in bundle["scenarios"]), bundle["scenarios"]
    reasons = " | ".join(bundle["reasons"])
    assert "offers no VFIO migration" in reasons
    assert "completed no migration" in reasons
