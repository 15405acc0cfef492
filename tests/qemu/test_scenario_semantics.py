"""Scenario text reaching real QEMU: structured values stay one value, and what a scenario without steps runs.

The escaping is checked where it matters, on QEMU's own option parser (get_opt_value reads ',,' as one comma):
unescaped, ``mac = "52:54:00:12:34:56,id=evil"`` is accepted by QEMU 7.2 and 10.0 as a MAC plus a second id.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.outcome import Outcome, VmState
from harness.binaries import QemuBinary
from harness.executor import run_scenario
from harness.loader import load_scenario


def run_toml(tmp_path: Path, binary: QemuBinary, name: str, text: str) -> Outcome:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return run_scenario(load_scenario(path), binary, workdir=tmp_path / "work", timeout=30.0)


@pytest.mark.parametrize(
    ("device", "error"),
    [
        (
            "driver = 'virtio-net-pci'\nid = 'net0'\nproperties = { mac = '52:54:00:12:34:56,id=evil' }",
            "Property 'virtio-net-device.mac' doesn't take value '52:54:00:12:34:56,id=evil'",
        ),
        ("driver = 'virtio-net-pci,id=evil'", "'virtio-net-pci,id=evil' is not a valid device model name"),
    ],
)
def test_a_comma_in_a_device_value_cannot_add_an_option(
    tmp_path: Path, qemu_binary: QemuBinary, device: str, error: str
) -> None:
    outcome = run_toml(tmp_path, qemu_binary, "comma", f"step = []\n[[vm.device]]\n{device}\n")
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "startup", error), outcome.to_json()


def test_a_comma_in_a_device_id_stays_in_the_id(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    """Unescaped, ``id = "n0,addr=0x5"`` is a valid device n0 in slot 5; escaped, QEMU refuses the id."""
    outcome = run_toml(
        tmp_path, qemu_binary, "comma-id", "step = []\n[[vm.device]]\ndriver = 'virtio-net-pci'\nid = 'n0,addr=0x5'\n"
    )
    assert (outcome.verdict, outcome.stage) == ("refused", "startup"), outcome.to_json()
    assert outcome.error == "Parameter 'id' expects an identifier"


def test_a_scenario_without_steps_migrates_and_step_empty_does_not(tmp_path: Path, qemu_binary: QemuBinary) -> None:
    nvme = "[vm]\nargs = ['-device', 'nvme,serial=n0']\n"
    migrated = run_toml(tmp_path / "a", qemu_binary, "bare", nvme)
    assert (migrated.verdict, migrated.stage) == ("refused", "migrate"), migrated.to_json()
    assert migrated.error == "State blocked by non-migratable device '0000:00:01.0/nvme'"
    startup_only = run_toml(tmp_path / "b", qemu_binary, "startup", "step = []\n" + nvme)
    assert startup_only.verdict == "completed" and startup_only.stage is None
    assert startup_only.source == VmState("none", "running")
