"""Ids that are taken: object-add onto an id of /objects, device_add onto a device id (found by migconform fuzz).

Expected texts are real QEMU's, 7.2.22 and 10.0.2 alike (harness/suite/qmp-object-add-duplicate-id.toml,
qmp-object-add-id-of-command-line.toml, qmp-device-add-duplicate-id.toml, qmp-device-add-duplicate-id-no-slot.toml).
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario, Step, VmSpec
from reference_impl import predict

RAM = {"qom-type": "memory-backend-ram", "id": "mem0", "size": 1048576}
ROOT_PORTS = ("-device", "pcie-root-port,id=rp0,chassis=1", "-device", "pcie-root-port,id=rp1,chassis=2")


def run(*steps: Step, args: tuple[str, ...] = (), version: str = "10.0") -> Outcome:
    vm = VmSpec(memory="64M", args=args)
    return predict(Scenario("t", source=vm, destination=vm, steps=steps), version, HostFacts())


def qmp(command: str, **arguments: Any) -> Step:
    return Step("qmp", side="source", command=command, arguments=arguments)


@pytest.mark.parametrize("version", ["7.2", "10.0", "10.2"])
def test_second_object_with_one_id_is_refused(version: str) -> None:
    outcome = run(qmp("object-add", **RAM), qmp("object-add", **RAM), version=version)
    assert (outcome.verdict, outcome.stage) == ("refused", "qmp")
    assert outcome.error == "attempt to add duplicate property 'mem0' to object (type 'container')"


def test_object_of_the_command_line_takes_its_id() -> None:
    outcome = run(qmp("object-add", **RAM), args=("-object", "memory-backend-ram,id=mem0,size=1M"))
    assert outcome.error == "attempt to add duplicate property 'mem0' to object (type 'container')"
    other = run(qmp("object-add", **{**RAM, "id": "mem1"}), args=("-object", "memory-backend-ram,id=mem0,size=1M"))
    assert other.verdict == "completed"
    assert run(qmp("object-add", **RAM)).verdict == "completed"


@pytest.mark.parametrize("second_bus", ["rp1", "rp0"])
def test_duplicate_device_id_is_checked_before_the_slot(second_bus: str) -> None:
    first = qmp("device_add", driver="virtio-rng-pci", id="dev0", bus="rp0")
    second = qmp("device_add", driver="virtio-rng-pci", id="dev0", bus=second_bus)
    outcome = run(first, second, args=ROOT_PORTS)
    assert (outcome.verdict, outcome.error) == ("refused", "Duplicate device ID 'dev0'")
    other = run(first, qmp("device_add", driver="virtio-rng-pci", id="dev1", bus="rp1"), args=ROOT_PORTS)
    assert other.verdict == "completed"
