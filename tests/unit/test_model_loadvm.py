"""The destination's load failures and 10.1+/10.2 migration rules, through predict().

Expected values are real QEMU 10.2.2 answers (the bundled suite on a QEMU built by ``migconform qemu build``),
with the rule's QEMU function named in reference_impl.loadvm / reference_impl.migration.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import DeviceSpec, MigrationSpec, Scenario, Step, VmSpec
from reference_impl import predict
from reference_impl.loadvm import (
    DESTINATION_LOAD_FAILURE,
    RAM_LOAD_ERROR,
    SECTION_FOOTER_ERROR,
    load_failure,
    state_blocked,
    unknown_section,
)

HOST = HostFacts()
EINVAL_EXIT = f"destination QEMU exited with status 1: {DESTINATION_LOAD_FAILURE}"
VDAGENT = Step("qmp", command="chardev-add", arguments={"id": "vd0", "backend": {"type": "qemu-vdagent", "data": {}}})
REMOVE_VDAGENT = Step("qmp", command="chardev-remove", arguments={"id": "vd0"})


def _run(*items: Step, version: str, source: VmSpec | None = None, destination: VmSpec | None = None) -> Outcome:
    scenario = Scenario("t", source=source or VmSpec(), destination=destination or VmSpec(), steps=items)
    return predict(scenario, version, HOST)


def _exec(version: str, source: VmSpec | None = None, destination: VmSpec | None = None) -> Outcome:
    scenario = Scenario(
        "t", source=source or VmSpec(), destination=destination or VmSpec(), migration=MigrationSpec(transport="exec")
    )
    return predict(scenario, version, HOST)


def test_the_cause_is_appended_from_10_2_only() -> None:
    assert load_failure(1001, "x") == DESTINATION_LOAD_FAILURE
    assert load_failure(1002, "x") == f"{DESTINATION_LOAD_FAILURE}: x"


@pytest.mark.parametrize("version", ["7.2", "10.0", "10.1"])
def test_older_profiles_keep_the_bare_line(version: str) -> None:
    outcome = _exec(version, source=VmSpec(memory="64M"), destination=VmSpec(memory="128M"))
    assert outcome.error == EINVAL_EXIT


def test_another_ram_size_names_rams_section() -> None:
    # real 10.2.2, precopy-memory-mismatch
    outcome = _exec("10.2", source=VmSpec(memory="64M"), destination=VmSpec(memory="128M"))
    assert outcome.error == f"{EINVAL_EXIT}: {RAM_LOAD_ERROR}"
    assert RAM_LOAD_ERROR.endswith("Failed to load vmstate version_id: 4, ret: -22")


def test_a_missing_device_names_its_section() -> None:
    # real 10.2.2, precopy-device-mismatch
    outcome = _exec("10.2", source=VmSpec(args=("-device", "virtio-rng-pci")))
    assert outcome.error == f"{EINVAL_EXIT}: {unknown_section('0000:00:01.0/virtio-rng')}"
    assert "'0000:00:01.0/virtio-rng' 0. Make sure that your current VM setup" in str(outcome.error)


def test_a_missing_device_whose_section_name_is_unknown_is_not_modelled() -> None:
    outcome = _exec("10.2", source=VmSpec(devices=(DeviceSpec("e1000"),)))
    assert outcome.not_modelled == "the vmstate section name of -device e1000"
    assert _exec("10.0", source=VmSpec(devices=(DeviceSpec("e1000"),))).error == EINVAL_EXIT


def test_an_unmigratable_destination_device_comes_first() -> None:
    # real 10.2.2, unmigratable-savevm-load-destination: qemu_savevm_state_blocked before any section.
    destination = VmSpec(memory="128M", devices=(DeviceSpec("nvme", properties={"serial": "n0"}),))
    outcome = _exec("10.2", source=VmSpec(memory="64M"), destination=destination)
    assert outcome.error == f"{EINVAL_EXIT}: {state_blocked('0000:00:01.0/nvme')}"


@pytest.mark.parametrize("version", ["7.2", "10.0", "10.2"])
def test_a_cancel_cuts_rams_section(version: str) -> None:
    # real 10.2.2, cancel-precopy-tcp; 7.2.22 and 10.0.2 print the bare line.
    outcome = _run(
        Step("set-parameters", parameters={"max-bandwidth": 1000}), Step("migrate"), Step("cancel"), Step("wait"),
        version=version, source=VmSpec(memory="4G"), destination=VmSpec(memory="4G"),
    )  # fmt: skip
    expected = f"{EINVAL_EXIT}: {SECTION_FOOTER_ERROR}" if version == "10.2" else EINVAL_EXIT
    assert outcome.error == expected


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_vdagent_blocks_migrate_before_10_1(version: str) -> None:
    outcome = _run(VDAGENT, Step("migrate"), Step("wait"), version=version)
    assert outcome.verdict == "refused"
    assert outcome.error == "The vdagent chardev doesn't yet support migration"


@pytest.mark.parametrize("version", ["10.1", "10.2"])
def test_a_vdagent_the_destination_lacks_fails_its_load(version: str) -> None:
    # real 10.2.2, blocker-chardev-add-idle (exec, with its wait): the source completes, the destination exits 1.
    # Over tcp the source may still be writing when the destination exits (Broken pipe, 1 of 3 runs): a race.
    tcp = _run(VDAGENT, Step("migrate", transport="tcp"), Step("wait"), version=version)
    assert tcp.not_modelled == "a vdagent section the destination does not load, over tcp/unix"
    outcome = _run(VDAGENT, Step("migrate", transport="exec"), Step("wait"), version=version)
    assert outcome.verdict == "failed"
    cause = f": {unknown_section('vdagent', 0)}" if version == "10.2" else ""
    assert outcome.error == f"{EINVAL_EXIT}{cause}"
    assert outcome.source is not None and (outcome.source.status, outcome.source.runstate) == (
        "completed", "postmigrate",
    )  # fmt: skip
    assert outcome.destination is None


def test_a_vdagent_on_both_sides_loads() -> None:
    both = Step("qmp", side="both", command="chardev-add", arguments=dict(VDAGENT.arguments))
    assert _run(both, Step("migrate"), Step("wait"), version="10.2").verdict == "completed"


def test_a_removed_vdagent_is_meant_to_migrate() -> None:
    # Real 10.2.2 aborts here (docs/qemu-bugs.md "11."): the model predicts QEMU's intent.
    outcome = _run(VDAGENT, REMOVE_VDAGENT, Step("migrate"), Step("wait"), version="10.2")
    assert outcome.verdict == "completed"


def test_a_vdagent_with_a_return_path_is_not_modelled() -> None:
    caps = Step("set-capabilities", side="both", capabilities={"return-path": True})
    outcome = _run(caps, VDAGENT, Step("migrate"), Step("wait"), version="10.2")
    assert outcome.not_modelled is not None


def _dirty_bitmaps_postcopy(version: str, **caps: bool) -> Any:
    scenario = Scenario(
        "t",
        source=VmSpec(memory="1G"),
        destination=VmSpec(memory="1G"),
        migration=MigrationSpec(
            capabilities={"dirty-bitmaps": True, "events": True, **caps},
            parameters={"max-bandwidth": 1000000},
            mode="postcopy",
        ),
    )
    return predict(scenario, version, HOST).events["source"]


def test_dirty_bitmaps_alone_switches_to_postcopy_from_10_1() -> None:
    # real 10.2.2 postcopy-dirty-bitmaps-only: commit 7aaa1fc072 checks the postcopy switch before completion.
    assert _dirty_bitmaps_postcopy("10.2") == ["setup", "active", "device", "postcopy-active", "completed"]
    assert _dirty_bitmaps_postcopy("10.1") == ["setup", "active", "device", "postcopy-active", "completed"]
    # real 10.0.2 / 7.2.22: completes as precopy.
    assert _dirty_bitmaps_postcopy("10.0") == ["setup", "active", "device", "completed"]
    assert _dirty_bitmaps_postcopy("7.2") == ["setup", "active", "completed"]


def test_postcopy_device_needs_a_return_path_on_10_2() -> None:
    assert _dirty_bitmaps_postcopy("10.2", **{"return-path": True}) == [
        "setup", "active", "device", "postcopy-device", "postcopy-active", "completed",
    ]  # fmt: skip
