"""The cross-version rules (reference_impl.cross) through predict(source version, destination version).

Expected values are real QEMU's answers on 7.2.22, 10.0.2 and 10.2.2 (harness/suite/cross over every ordered
pair, docs/real-qemu-facts.md "Cross-version"); each test names the QEMU function its rule comes from.
"""

from __future__ import annotations

import pytest

from contract.host import HostFacts
from contract.messages import vm_exited
from contract.outcome import Outcome
from contract.scenario import MigrationSpec, Scenario, Step, VmSpec
from contract.versions import Version
from reference_impl.cross import supported
from reference_impl.limits import NotModelled
from reference_impl.loadvm import (
    CONFIGURATION_POST_LOAD,
    DESTINATION_LOAD_FAILURE,
    SECTION_FOOTER_ERROR,
    load_failure,
    unknown_section,
)
from reference_impl.machine_types import machine_error, resolve_machine
from reference_impl.predict import predict

HOST = HostFacts()
V72, V100, V102 = Version(7, 2), Version(10, 0), Version(10, 2)
PAIRS = [("7.2", "10.0"), ("7.2", "10.2"), ("10.0", "7.2"), ("10.0", "10.2"), ("10.2", "7.2"), ("10.2", "10.0")]
PINNED = VmSpec(machine="pc-q35-7.2", memory="64M")


def _run(
    source: str,
    destination: str,
    vm: VmSpec = PINNED,
    *,
    transport: str = "exec",
    dst_vm: VmSpec | None = None,
    steps: tuple[Step, ...] | None = None,
    capabilities: dict[str, bool] | None = None,
) -> Outcome:
    scenario = Scenario(
        "t",
        source=vm,
        destination=dst_vm or vm,
        migration=MigrationSpec(transport=transport, capabilities=capabilities or {}),
        steps=steps,
    )
    return predict(scenario, source, HOST, destination)


def _destination_exit(line: str) -> str:
    return vm_exited("destination", 1, line)


# ---- machine types: select_machine / find_machine ----------------------------------------------------------
@pytest.mark.parametrize(
    ("machine", "version", "error"),
    [
        ("pc-q35-10.0", V72, "unsupported machine type"),
        ("pc-q35-10.2", V100, 'unsupported machine type: "pc-q35-10.2"'),
        ("pc-q35-4.2", V102, 'unsupported machine type: "pc-q35-4.2"'),
        ("pc-q35-4.0.1", V102, 'unsupported machine type: "pc-q35-4.0.1"'),
        ("pc-i440fx-2.3", V100, 'unsupported machine type: "pc-i440fx-2.3"'),
        ("pc-i440fx-4.0.1", V72, "unsupported machine type"),
        ("virt", V100, 'unsupported machine type: "virt"'),
        ("pc-q35-7.2", V72, None),
        ("pc-q35-4.2", V100, None),
        ("pc-i440fx-2.3", V72, None),
        ("pc-q35-10.0,accel=tcg", V102, None),
        ("microvm", V102, None),
    ],
)
def test_machine_types_each_version_has(machine: str, version: Version, error: str | None) -> None:
    assert machine_error(VmSpec(machine=machine), version) == error


def test_aliases_resolve_to_the_versions_newest_type() -> None:
    assert [resolve_machine("q35", v) for v in (V72, V100, V102)] == ["pc-q35-7.2", "pc-q35-10.0", "pc-q35-10.2"]
    assert resolve_machine("pc", V100) == "pc-i440fx-10.0"


def test_unmeasured_profiles_say_not_modelled_for_old_types() -> None:
    # 10.1's oldest types were neither measured nor read (8.0-9.2: tests/unit/test_model_midversions.py).
    with pytest.raises(NotModelled):
        resolve_machine("pc-q35-4.2", Version(10, 1))
    assert resolve_machine("pc-q35-5.0", Version(10, 1)) == "pc-q35-5.0"


def test_a_machine_type_one_side_lacks_refuses_that_sides_start() -> None:
    newest = VmSpec(machine="pc-q35-10.0", memory="64M")
    source_old = _run("7.2", "10.0", newest)
    assert (source_old.verdict, source_old.stage, source_old.error) == (
        "refused",
        "startup",
        "unsupported machine type",
    )
    assert source_old.source is None and source_old.destination is None
    destination_old = _run("10.0", "7.2", newest)
    assert (destination_old.stage, destination_old.error) == ("startup", "unsupported machine type")
    assert destination_old.source is not None and destination_old.destination is None
    assert _run("10.2", "10.0", newest).verdict == "completed"


def test_pci_devices_on_i440fx_are_modelled() -> None:
    # pci.0's slots are modelled (reference_impl.pci_buses); measured: pc-i440fx-7.2 with e1000e over exec
    # agrees on the 6 ordered pairs of 7.2.22, 10.0.2, 10.2.2 (2026-12-03).
    outcome = _run("10.0", "10.2", VmSpec(machine="pc-i440fx-7.2", args=("-device", "e1000e")))
    assert outcome.not_modelled is None
    assert outcome.verdict == _run("10.0", "10.2", VmSpec(machine="pc-i440fx-7.2")).verdict == "completed"


# ---- the configuration section: configuration_post_load ------------------------------------------------------
@pytest.mark.parametrize(("source", "destination"), PAIRS)
def test_q35_across_versions_fails_the_machine_type_check(source: str, destination: str) -> None:
    outcome = _run(source, destination, VmSpec(memory="64M"))
    line = load_failure(1002, CONFIGURATION_POST_LOAD) if destination == "10.2" else DESTINATION_LOAD_FAILURE
    assert (outcome.verdict, outcome.stage, outcome.error) == ("failed", "migration", _destination_exit(line))
    assert outcome.source is not None and (outcome.source.status, outcome.source.runstate) == (
        "completed",
        "postmigrate",
    )
    assert outcome.destination is None


@pytest.mark.parametrize(("source", "destination"), PAIRS)
@pytest.mark.parametrize("transport", ["tcp", "unix", "exec"])
def test_one_machine_type_both_know_migrates(source: str, destination: str, transport: str) -> None:
    outcome = _run(source, destination, transport=transport)
    assert outcome.verdict == "completed" and outcome.destination is not None
    assert outcome.destination.runstate == "running"


def test_the_name_check_compares_over_the_received_length() -> None:
    """strncmp(state->name, current_name, state->len): "pc-q35-4.0" matches a local "pc-q35-4.0.1"."""
    short, long = VmSpec(machine="pc-q35-4.0", memory="64M"), VmSpec(machine="pc-q35-4.0.1", memory="64M")
    assert _run("7.2", "10.0", short, dst_vm=long).verdict == "completed"
    reverse = _run("10.0", "7.2", long, dst_vm=short)
    assert reverse.error == _destination_exit(DESTINATION_LOAD_FAILURE)


def test_two_machine_types_on_one_version_fail_alike() -> None:
    outcome = _run("10.2", "10.2", PINNED, dst_vm=VmSpec(machine="pc-q35-7.1", memory="64M"))
    assert outcome.error == _destination_exit(load_failure(1002, CONFIGURATION_POST_LOAD))


def test_x_ignore_shared_must_be_set_on_both_sides() -> None:
    """configuration_validate_capabilities (should_validate_capability: x-ignore-shared on every version)."""
    source_only = (Step("set-capabilities", capabilities={"x-ignore-shared": True}), Step("migrate"), Step("wait"))
    outcome = _run("7.2", "10.2", steps=source_only)
    assert outcome.error == _destination_exit(load_failure(1002, CONFIGURATION_POST_LOAD))
    assert _run("10.2", "7.2", steps=source_only).error == _destination_exit(DESTINATION_LOAD_FAILURE)
    assert _run("10.2", "7.2", capabilities={"x-ignore-shared": True}).verdict == "completed"


def test_over_a_socket_the_sources_error_is_a_race() -> None:
    outcome = _run("7.2", "10.0", VmSpec(memory="64M"), transport="tcp")
    assert outcome.not_modelled == (
        "the source's error when the destination refuses the configuration section over tcp/unix"
    )


# ---- what one side does not know --------------------------------------------------------------------------
def test_a_capability_the_older_destination_lacks_is_refused_there() -> None:
    caps = {"return-path": True, "switchover-ack": True}
    outcome = _run("10.0", "7.2", transport="tcp", capabilities=caps)
    assert (outcome.stage, outcome.error) == (
        "set-capabilities",
        "Parameter 'capability' does not accept value 'switchover-ack'",
    )
    assert outcome.source is not None and outcome.destination is not None
    assert _run("10.2", "10.0", transport="tcp", capabilities=caps).verdict == "completed"


def test_a_capability_the_newer_destination_dropped_is_refused_there() -> None:
    steps = (Step("set-capabilities", side="both", capabilities={"compress": True}), Step("migrate"), Step("wait"))
    outcome = _run("7.2", "10.2", transport="tcp", steps=steps)
    assert (outcome.stage, outcome.error) == (
        "set-capabilities",
        "Parameter 'capability' does not accept value 'compress'",
    )


@pytest.mark.parametrize(
    ("destination", "line"), [("7.2", DESTINATION_LOAD_FAILURE), ("10.0", DESTINATION_LOAD_FAILURE)]
)
@pytest.mark.parametrize("transport", ["exec"])
def test_the_vdagent_section_of_10_1_is_unknown_to_older_destinations(
    destination: str, line: str, transport: str
) -> None:
    """vdagent_chr_init registers section "vdagent" since 10.1; qemu_loadvm_section_start_full finds no handler."""
    vm = VmSpec(machine="pc-q35-7.2", memory="64M", args=("-chardev", "qemu-vdagent,id=vd0,name=vdagent"))
    outcome = _run("10.2", destination, vm, transport=transport)
    assert (outcome.verdict, outcome.error) == ("failed", _destination_exit(line))
    assert outcome.source is not None and outcome.source.status == "completed"


def test_a_device_the_destination_lacks_is_named_by_a_10_2_destination() -> None:
    outcome = _run(
        "7.2", "10.2", dst_vm=PINNED, vm=VmSpec(machine="pc-q35-7.2", memory="64M", args=("-device", "virtio-rng-pci"))
    )
    assert outcome.error == _destination_exit(load_failure(1002, unknown_section("0000:00:01.0/virtio-rng")))


def test_a_cut_stream_is_reported_in_the_destinations_form() -> None:
    steps = (Step("set-parameters", parameters={"max-bandwidth": 1000}), Step("migrate"), Step("cancel"), Step("wait"))
    big = VmSpec(machine="pc-q35-7.2", memory="4G")
    to_new = _run("10.0", "10.2", big, transport="tcp", steps=steps)
    assert to_new.error == _destination_exit(load_failure(1002, SECTION_FOOTER_ERROR))
    assert _run("10.2", "10.0", big, transport="tcp", steps=steps).error == _destination_exit(DESTINATION_LOAD_FAILURE)
    # RAM's section id is the source's: 2 before 9.1 ("block" registered before it), then 1.
    from_old = _run("7.2", "10.2", big, transport="tcp", steps=steps)
    assert from_old.error == _destination_exit(load_failure(1002, "Section footer error, section_id: 2"))


# ---- not modelled across versions (VFIO: tests/unit/test_model_cross_vfio.py) --------------------------------
def test_a_quirk_the_destination_decides_is_not_modelled_across_versions() -> None:
    steps = (Step("set-capabilities", capabilities={"compress": True}), Step("migrate"), Step("wait"))
    assert (
        _run("7.2", "10.0", transport="tcp", steps=steps).not_modelled
        == "quirk 'compress-source-only' with a 10.0 destination"
    )


def test_every_pair_of_profiles_is_supported() -> None:
    assert supported(V72, V102) and supported(V102, V72)


# ---- capabilities both sides must share (tcp/unix streams) ---------------------------------------------------
def _source_caps(caps: dict[str, bool], *, stop: bool = False) -> tuple[Step, ...]:
    first = (Step("stop"),) if stop else ()
    return (*first, Step("set-capabilities", capabilities=caps), Step("migrate", transport="tcp"), Step("wait"))


def test_switchover_ack_the_destination_never_sends_keeps_both_sides_active() -> None:
    """loadvm_process_command acks at MIG_CMD_OPEN_RETURN_PATH only with the capability on the destination;
    migration_can_switchover waits for it while the source runs."""
    caps = {"return-path": True, "switchover-ack": True}
    outcome = _run("10.2", "7.2", transport="tcp", steps=_source_caps(caps))
    assert (outcome.verdict, outcome.stage) == ("failed", "migration")
    error = outcome.error or ""
    assert error.startswith("timed out after") and error.endswith("(last seen: active)")
    assert outcome.source is not None and (outcome.source.status, outcome.source.runstate) == ("active", "running")
    assert outcome.destination is not None and outcome.destination.status == "active"
    paused = _run("10.0", "10.2", transport="tcp", steps=_source_caps(caps, stop=True))
    assert paused.verdict == "completed" and paused.destination is not None
    assert paused.destination.runstate == "paused"


@pytest.mark.parametrize(
    ("cap", "what"), [("multifd", "multifd on one side"), ("postcopy-ram", "postcopy-ram on the source")]
)
def test_racy_one_sided_capabilities_are_not_modelled(cap: str, what: str) -> None:
    outcome = _run("10.0", "10.0", transport="tcp", steps=_source_caps({cap: True}))
    assert (outcome.not_modelled or "").startswith(what)


def test_postcopy_ram_on_the_destination_only_changes_nothing() -> None:
    steps = (
        Step("set-capabilities", side="destination", capabilities={"postcopy-ram": True}),
        Step("migrate"),
        Step("wait"),
    )
    assert _run("10.2", "7.2", transport="tcp", steps=steps).verdict == "completed"


def test_a_vdagent_section_the_older_destination_lacks_is_a_race_over_tcp() -> None:
    vm = VmSpec(machine="pc-q35-7.2", memory="64M", args=("-chardev", "qemu-vdagent,id=vd0,name=vdagent"))
    outcome = _run("10.2", "10.0", vm, transport="tcp")
    assert outcome.not_modelled == "a vdagent section the destination does not load, over tcp/unix"
