"""VFIO devices across QEMU versions (reference_impl.cross_vfio, reference_impl.loadvm) through predict().

Expected values are real QEMU's answers in the mtty lab (harness/suite/cross/cross-vfio-*.toml on 7.2.22,
10.0.2 and 10.2.2, docs/real-qemu-facts.md "Cross-version", VFIO); each test names the QEMU function its rule
comes from.
"""

from __future__ import annotations

import pytest

from contract.host import HostFacts
from contract.messages import vm_exited
from contract.outcome import Outcome
from contract.scenario import DeviceSpec, MigrationSpec, Scenario, VmSpec
from contract.versions import profile_for
from reference_impl.cross_vfio import unloaded_section, vfio_sections
from reference_impl.loadvm import DESTINATION_LOAD_FAILURE, load_failure, unknown_section
from reference_impl.machine import Machine, realize
from reference_impl.predict import predict
from reference_impl.vfio.realize import V1_BLOCKER

# The stock lab: dirty reports fail, so a completed precopy turns device dirty tracking off.
HOST = HostFacts(userfaultfd=True, uffd_wp=True, kvm=False, vfio_dirty_report_works=False)
WORKAROUND = {"x-device-dirty-page-tracking": "off", "enable-migration": "on"}


def _vm(props: dict[str, str] | None = None, machine: str = "pc-q35-7.2", personality: str = "migratable") -> VmSpec:
    device = DeviceSpec("vfio-pci", id="vfio0", properties=props or {}, personality=personality)
    return VmSpec(machine=machine, memory="64M", devices=(device,))


def _run(
    source: str,
    destination: str,
    src: VmSpec,
    dst: VmSpec | None = None,
    *,
    transport: str = "exec",
    caps: dict[str, bool] | None = None,
    mode: str = "precopy",
    host: HostFacts = HOST,
) -> Outcome:
    migration = MigrationSpec(transport=transport, capabilities=caps or {}, mode=mode)
    scenario = Scenario("t", source=src, destination=dst or src, migration=migration)
    return predict(scenario, source, host, destination)


def _machine(spec: VmSpec, version: str, role: str) -> Machine:
    vm = realize(spec, profile_for(version), HOST, role)
    assert isinstance(vm, Machine)
    return vm


# ---- 7.2: only the v1 region (vfio_migration_probe), so no handler on either side ---------------------------
@pytest.mark.parametrize("destination", ["10.0", "10.2"])
def test_a_7_2_source_refuses_migrate_whatever_the_destination_loads(destination: str) -> None:
    """vfio_migration_probe adds "VFIO device doesn't support migration"; migrate_prepare refuses."""
    out = _run("7.2", destination, _vm(), _vm(WORKAROUND), transport="unix")
    assert (out.verdict, out.stage, out.error) == ("refused", "migrate", V1_BLOCKER)


@pytest.mark.parametrize("source", ["10.0", "10.2"])
@pytest.mark.parametrize("props", [{}, {"x-enable-migration": "on"}])
def test_a_7_2_destination_refuses_the_vfio_section_over_exec(source: str, props: dict[str, str]) -> None:
    """qemu_loadvm_section_start_full: no handler for "0000:00:01.0/vfio"; the source completed first."""
    out = _run(source, "7.2", _vm(WORKAROUND), _vm(props))
    assert (out.verdict, out.stage) == ("failed", "migration")
    assert out.error == vm_exited("destination", 1, DESTINATION_LOAD_FAILURE)
    assert out.source is not None and out.source.status == "completed" and out.destination is None


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_7_2_destination_over_a_socket_is_a_race(transport: str) -> None:
    out = _run("10.2", "7.2", _vm(WORKAROUND), _vm(), transport=transport)
    assert out.not_modelled == "a vfio section the destination does not load, over tcp/unix"


def test_the_vfio_idstr_is_the_pci_path() -> None:
    """vfio_migration_init: "<vmstate_if_get_id>/vfio"; measured '0000:00:01.0/vfio' on pc-q35-7.2."""
    source, destination = _machine(_vm(WORKAROUND), "10.2", "source"), _machine(_vm(), "7.2", "destination")
    assert [(idstr, h is not None) for idstr, h in vfio_sections(source)] == [("0000:00:01.0/vfio", True)]
    assert [(idstr, h is not None) for idstr, h in vfio_sections(destination)] == [("0000:00:01.0/vfio", False)]
    assert unloaded_section(source, destination) == "0000:00:01.0/vfio"


@pytest.mark.parametrize(("source", "destination"), [("10.0", "7.2"), ("7.2", "10.2")])
def test_enable_migration_on_a_7_2_side_stops_that_side_at_startup(source: str, destination: str) -> None:
    """Each side reads its own properties: 7.2 has only x-enable-migration."""
    out = _run(source, destination, _vm(WORKAROUND))
    assert (out.verdict, out.stage, out.error) == (
        "refused",
        "startup",
        "Property 'vfio-pci.enable-migration' not found",
    )
    assert out.destination is None and (out.source is None) == (source == "7.2")


# ---- 10.0 <-> 10.2: the same vfio section (vfio_save_* / vfio_load_state) -----------------------------------
@pytest.mark.parametrize(("source", "destination"), [("10.0", "10.2"), ("10.2", "10.0")])
def test_precopy_between_10_0_and_10_2_completes(source: str, destination: str) -> None:
    out = _run(source, destination, _vm(WORKAROUND, "pc-q35-10.0"), transport="unix")
    assert (out.verdict, out.error) == ("completed", None)


def test_each_side_reports_its_own_vfio_events() -> None:
    vm = _vm({**WORKAROUND, "migration-events": "on"}, "pc-q35-10.0")
    out = _run("10.0", "10.2", vm, transport="unix")
    assert out.vfio_states == {
        "vfio0": ["pre-copy", "pre-copy-p2p", "stop-copy", "stop"],
        "destination:vfio0": ["resuming", "running-p2p", "running"],
    }


@pytest.mark.parametrize(
    ("destination", "line"),
    [
        ("10.2", load_failure(1002, unknown_section("0000:00:01.0/vfio"))),
        ("10.0", DESTINATION_LOAD_FAILURE),
    ],
)
def test_a_blocked_destination_device_registers_no_handler(destination: str, line: str) -> None:
    """vfio_migration_realize returns before vfio_migration_init for enable-migration=off; 10.2 names the
    section in its last line (qemu_loadvm_section_start_full's error_setg), 10.0 in an earlier one."""
    source = "10.0" if destination == "10.2" else "10.2"
    dst = _vm({"enable-migration": "off"}, "pc-q35-10.0")
    out = _run(source, destination, _vm(WORKAROUND, "pc-q35-10.0"), dst)
    assert (out.verdict, out.error) == ("failed", vm_exited("destination", 1, line))


@pytest.mark.parametrize(("source", "destination"), [("10.0", "10.2"), ("10.2", "10.0")])
def test_multifd_between_10_0_and_10_2_completes(source: str, destination: str) -> None:
    """vfio_multifd_setup decides alike on both sides; the device state packets are the same."""
    out = _run(source, destination, _vm(WORKAROUND, "pc-q35-10.0"), transport="unix", caps={"multifd": True})
    assert (out.verdict, out.error) == ("completed", None)


@pytest.mark.parametrize("prop", ["x-migration-multifd-transfer", "x-migration-load-config-after-iter"])
def test_multifd_with_a_multifd_property_set_is_not_modelled(prop: str) -> None:
    dst = _vm({**WORKAROUND, prop: "on"}, "pc-q35-10.0")
    out = _run("10.0", "10.2", _vm(WORKAROUND, "pc-q35-10.0"), dst, transport="unix", caps={"multifd": True})
    assert (out.not_modelled or "").startswith("a VFIO device's multifd properties across QEMU versions")


def test_another_kernel_driver_on_the_destination_is_not_modelled() -> None:
    dst = _vm(WORKAROUND, "pc-q35-10.0", personality="no-precopy")
    out = _run("10.0", "10.2", _vm(WORKAROUND, "pc-q35-10.0"), dst, transport="unix")
    assert (out.not_modelled or "").startswith("a VFIO device whose kernel driver differs")


def test_versions_whose_vfio_stream_was_not_read_are_not_modelled() -> None:
    out = _run("9.2", "10.0", _vm(WORKAROUND, "pc-q35-9.2"), transport="unix")
    assert (out.not_modelled or "").startswith("the vfio section's format between 9.2 -> 10.0")


def test_a_v1_host_across_versions_is_not_modelled() -> None:
    """With a v1 migration region 7.2 would register its handler: the v1 stream into v2 is not followed."""
    v1 = HostFacts(userfaultfd=True, uffd_wp=True, kvm=False, vfio_dirty_report_works=False, vfio_v1_region=True)
    out = _run("7.2", "10.0", _vm({"x-enable-migration": "on"}), _vm(WORKAROUND), host=v1)
    assert (out.not_modelled or "").startswith("a VFIO v1 migration stream across QEMU versions")


# ---- the gates are the source's own (vfio_save_prepare, 8.2+, in the source's migrate_init) -----------------
@pytest.mark.parametrize(("source", "destination"), [("10.0", "10.2"), ("10.2", "10.0"), ("10.2", "7.2")])
@pytest.mark.parametrize(
    ("cap", "mode", "text"),
    [
        ("postcopy-ram", "postcopy", "<vfio0>: VFIO migration is not supported with postcopy migration"),
        ("background-snapshot", "background-snapshot",
         "<vfio0>: VFIO migration is not supported with background snapshot"),
    ],
)  # fmt: skip
def test_the_save_prepare_gate_follows_the_source(
    source: str, destination: str, cap: str, mode: str, text: str
) -> None:
    machine = "pc-q35-7.2" if "7.2" in (source, destination) else "pc-q35-10.0"
    out = _run(source, destination, _vm(None, machine), _vm(None, machine), caps={cap: True}, mode=mode)
    assert (out.verdict, out.stage, out.error) == ("refused", "migrate", text)


def test_a_7_2_source_with_postcopy_is_refused_by_its_blocker_first() -> None:
    """7.2 has no save_prepare: the blocker in migrate_prepare refuses."""
    out = _run("7.2", "10.0", _vm(), _vm(WORKAROUND), caps={"postcopy-ram": True}, mode="postcopy")
    assert (out.verdict, out.stage, out.error) == ("refused", "migrate", V1_BLOCKER)
