"""vfio-pci realize gating per version, row by row against the lab measurements and QEMU's source.

"lab" = docs/vfio-lab.md, measured gating results (real QEMU 10.0.2 and 7.2.22 with an mtty device, stock
Debian 6.12 modules unless noted); "source" = hw/vfio/migration.c and hw/vfio/common.c. Device names
are the model's placeholders; the lab's "<uuid>" is the same name.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from contract.host import HostFacts
from contract.scenario import DeviceSpec
from contract.versions import V7_2, V8_0, V8_1, V8_2, V9_0, V9_1, V10_0, V10_2, Version
from reference_impl.blockers import MigrationBlockers
from reference_impl.vfio.api import VfioMachineState, VfioRealized, placeholder_name
from reference_impl.vfio.handlers import VfioSaveHandlers
from reference_impl.vfio.personality import qdict_bucket
from reference_impl.vfio.realize import vfio_mig_active, vfio_realize

STOCK = HostFacts(vfio_dirty_report_works=False)  # Debian 6.12 vfio.ko (lab P3)
REBUILT = HostFacts(vfio_dirty_report_works=True)  # the lab's rebuilt vfio.ko
WORKAROUND = {"x-device-dirty-page-tracking": "off", "enable-migration": "on"}  # docs/vfio-lab.md P3, fix A

DIRTY_10 = "VFIO device doesn't support device and IOMMU dirty tracking"
VIOMMU = "Migration is currently not supported with vIOMMU enabled"
DISABLED = "Migration is disabled for VFIO device"
NOT_IN_KERNEL = "VFIO migration is not supported in kernel"
V1_ONLY_MIGRATABLE = "disallowing migration blocker (--only-migratable) for: VFIO device doesn't support migration"
P2P_MULTI = "Multiple VFIO devices migration is supported only if all of them support P2P migration"
MULTI_8 = "Migration is currently not supported with multiple VFIO devices"


def machine(
    version: Version = V10_0, *, host: HostFacts = STOCK, only_migratable: bool = False, viommu: bool = False
) -> VfioMachineState:
    return VfioMachineState(version, host, MigrationBlockers(only_migratable=only_migratable), viommu=viommu)


def dev(
    props: Mapping[str, str] | None = None, personality: str | None = None, device_id: str = "vfio0"
) -> DeviceSpec:
    return DeviceSpec("vfio-pci", id=device_id, properties=dict(props or {}), personality=personality)


def realize(state: VfioMachineState, *devices: DeviceSpec) -> list[VfioRealized]:
    return [vfio_realize(d, placeholder_name(d.id, i), state) for i, d in enumerate(devices)]


# --- lab, enable-migration against blockers (QEMU 10.0.2) ---------------------------------------------------


@pytest.mark.parametrize(
    ("props", "error", "blocked", "warnings"),
    [
        # intel-iommu,caching-mode=on + enable-migration=on: realize FAILS
        ({"enable-migration": "on"}, f"vfio <vfio0>: <vfio0>: {VIOMMU}", None, []),
        # vIOMMU + auto: ok, migrate -> "<uuid>: Migration is currently not supported with vIOMMU enabled"
        ({}, None, f"<vfio0>: {VIOMMU}", []),
        ({"enable-migration": "auto"}, None, f"<vfio0>: {VIOMMU}", []),
        # vIOMMU + off: ok, migrate -> "Migration is disabled for VFIO device"
        ({"enable-migration": "off"}, None, f"<vfio0>: {DISABLED}", []),
        # vIOMMU + workaround props: FAILS, warning first, then the vIOMMU error
        (WORKAROUND, f"vfio <vfio0>: <vfio0>: {VIOMMU}", None, [f"<vfio0>: {DIRTY_10}"]),
        # vIOMMU + x-device-dirty-page-tracking=off, auto: the dirty-tracking check comes first
        ({"x-device-dirty-page-tracking": "off"}, None, f"<vfio0>: {DIRTY_10}", []),
    ],
)
def test_lab_4d_viommu_rows(
    props: dict[str, str], error: str | None, blocked: str | None, warnings: list[str]
) -> None:
    state = machine(viommu=True)
    (result,) = realize(state, dev(props))
    assert result.error == error
    assert state.blockers.is_blocked() == blocked
    assert result.warnings == warnings


@pytest.mark.parametrize(
    ("props", "blocked", "failure"),
    [
        # x-device-dirty-page-tracking=off + on: ok (warning), migration completed
        (WORKAROUND, None, None),
        # x-device-dirty-page-tracking=off + auto: blocked by the dirty-tracking reason
        ({"x-device-dirty-page-tracking": "off"}, f"<vfio0>: {DIRTY_10}", None),
        # plain on / auto: accepted, then failed "ram_save_setup failed: Operation not supported" (P3)
        ({"enable-migration": "on"}, None, "ram_save_setup failed: Operation not supported"),
        ({}, None, "ram_save_setup failed: Operation not supported"),
        # plain off: blocked
        ({"enable-migration": "off"}, f"<vfio0>: {DISABLED}", None),
    ],
)
def test_lab_4d_plain_rows_stock_kernel(props: dict[str, str], blocked: str | None, failure: str | None) -> None:
    from reference_impl.savevm import PrepareContext

    state = machine()
    (result,) = realize(state, dev(props))
    assert result.error is None
    assert state.blockers.is_blocked() == blocked
    if blocked is None:
        assert isinstance(result.handler, VfioSaveHandlers)
        assert result.handler.migration_failure(PrepareContext({}, "running")) == failure


@pytest.mark.parametrize("props", [{}, {"enable-migration": "on"}])
def test_lab_4d_rebuilt_vfio_ko_completes_with_default_props(props: dict[str, str]) -> None:
    # "a0/a2/a4 with the rebuilt vfio.ko: completed with default props, and no warning"
    from reference_impl.savevm import PrepareContext

    state = machine(host=REBUILT)
    (result,) = realize(state, dev(props))
    assert (result.error, result.warnings, state.blockers.is_blocked()) == (None, [], None)
    assert isinstance(result.handler, VfioSaveHandlers)
    assert result.handler.migration_failure(PrepareContext({}, "running")) is None


@pytest.mark.parametrize(
    ("props", "error"),
    [
        # -only-migratable + on / auto: ok, same as plain
        ({"enable-migration": "on"}, None),
        ({}, None),
        # -only-migratable + off: FAILS
        (
            {"enable-migration": "off"},
            f"vfio <vfio0>: disallowing migration blocker (--only-migratable) for: <vfio0>: {DISABLED}",
        ),
        # -only-migratable + x-device-dirty-page-tracking=off, auto: FAILS
        (
            {"x-device-dirty-page-tracking": "off"},
            f"vfio <vfio0>: disallowing migration blocker (--only-migratable) for: <vfio0>: {DIRTY_10}",
        ),
    ],
)
def test_lab_4d_only_migratable_rows(props: dict[str, str], error: str | None) -> None:
    state = machine(only_migratable=True)
    (result,) = realize(state, dev(props))
    assert result.error == error
    assert state.blockers.reasons == []


def test_lab_4d_mdpy_rows() -> None:
    # mdpy + on: FAILS "vfio <uuid>: <uuid>: VFIO migration is not supported in kernel"
    state = machine()
    (result,) = realize(state, dev({"enable-migration": "on"}, "no-migration"))
    assert result.error == f"vfio <vfio0>: <vfio0>: {NOT_IN_KERNEL}"
    assert state.migratable == []
    # mdpy + auto: ok, migrate -> "<mdpy-uuid>: VFIO migration is not supported in kernel"
    state = machine()
    (result,) = realize(state, dev({}, "no-migration"))
    assert (result.error, result.handler) == (None, None)
    assert state.blockers.is_blocked() == f"<vfio0>: {NOT_IN_KERNEL}"


@pytest.mark.parametrize("mtty_first", [True, False])
def test_lab_4d_on_device_next_to_a_blocked_device(mtty_first: bool) -> None:
    # "mtty on + mdpy auto, either order: ok: an existing blocker from another device does not fail
    # realize of an on device; migrate blocked by the mdpy reason"
    mtty = dev({"enable-migration": "on"}, "migratable", "mtty")
    mdpy = dev({}, "no-migration", "mdpy")
    state = machine()
    results = realize(state, *((mtty, mdpy) if mtty_first else (mdpy, mtty)))
    assert [r.error for r in results] == [None, None]
    assert state.blockers.is_blocked() == f"<mdpy>: {NOT_IN_KERNEL}"
    assert not vfio_mig_active(state)


# --- lab, 7.2.22 (QEMU 7.2.22) ------------------------------------------------------------------------------


@pytest.mark.parametrize("props", [{}, {"x-enable-migration": "on"}, {"x-enable-migration": "off"}])
def test_lab_4e_7_2_always_blocked(props: dict[str, str]) -> None:
    state = machine(V7_2)
    (result,) = realize(state, dev(props))
    assert (result.error, result.handler) == (None, None)
    assert state.blockers.is_blocked() == "VFIO device doesn't support migration"
    assert state.blockers.blocked_reasons() == ["VFIO device doesn't support migration"]


def test_lab_4e_7_2_unknown_property() -> None:
    (result,) = realize(machine(V7_2), dev({"enable-migration": "on"}))
    assert result.error == "Property 'vfio-pci.enable-migration' not found"


def test_lab_4e_7_2_only_migratable() -> None:
    # FAILS: "<uuid>: Migration disabled" (error_report) / "disallowing migration blocker
    # (--only-migratable) for: VFIO device doesn't support migration" (the realize error, no prefix)
    (result,) = realize(machine(V7_2, only_migratable=True), dev({"x-enable-migration": "on"}))
    assert result.error == V1_ONLY_MIGRATABLE
    assert result.warnings == ["<vfio0>: Migration disabled"]


# --- lab, later findings ------------------------------------------------------------------------------------


def test_lab_8_viommu_after_the_device_adds_no_blocker() -> None:
    # intel-iommu placed after vfio-pci: no vIOMMU blocker (the core passes viommu=False at realize time)
    state = machine(viommu=False)
    (result,) = realize(state, dev())
    assert state.blockers.is_blocked() is None and result.handler is not None


def test_lab_8_7_2_two_unknown_properties_name_enable_migration_in_any_order() -> None:
    for props in (WORKAROUND, dict(reversed(list(WORKAROUND.items())))):
        (result,) = realize(machine(V7_2), dev(props))
        assert result.error == "Property 'vfio-pci.enable-migration' not found"


def test_property_errors_follow_qdict_bucket_order_as_measured() -> None:
    # Measured on 7.2.22 and 10.0.2 with -device vfio-pci,host=0000:00:00.0,... (see the report): the
    # error names the key in the lowest QDict bucket, whatever the command-line order.
    assert qdict_bucket("enable-migration") < qdict_bucket("migration-events") < qdict_bucket(
        "x-device-dirty-page-tracking"
    ) < qdict_bucket("x-enable-migration")
    (r1,) = realize(machine(V7_2), dev({"x-device-dirty-page-tracking": "off", "migration-events": "on"}))
    assert r1.error == "Property 'vfio-pci.migration-events' not found"
    (r2,) = realize(machine(V10_0), dev({"x-enable-migration": "on", "migration-events": "bogus"}))
    assert r2.error == "Parameter 'migration-events' expects 'on' or 'off'"
    (r3,) = realize(machine(V10_0), dev({"enable-migration": "bogus", "x-enable-migration": "on"}))
    assert r3.error == "Parameter 'enable-migration' does not accept value 'bogus'"
    (r4,) = realize(machine(V10_0), dev({"x-enable-migration": "on"}))
    assert r4.error == "Property 'vfio-pci.x-enable-migration' not found"
    (r5,) = realize(machine(V10_0), dev({"enable-migration": "ON"}))
    assert r5.error == "Parameter 'enable-migration' does not accept value 'ON'"


def test_lab_8_migratable_and_no_p2p_both_auto() -> None:
    state = machine(V10_0)
    results = realize(state, dev({}, "migratable", "a"), dev({}, "no-p2p", "b"))
    assert [r.error for r in results] == [None, None]
    assert state.blockers.is_blocked() == P2P_MULTI  # no device name in this message


def test_lab_8_no_p2p_on_after_a_migratable_device() -> None:
    state = machine(V10_0)
    results = realize(state, dev({}, "migratable", "a"), dev({"enable-migration": "on"}, "no-p2p", "b"))
    assert results[1].error == f"vfio <b>: {P2P_MULTI}"


def test_lab_8_on_device_after_existing_multi_blocker_fails_since_8_2() -> None:
    # two no-P2P devices (auto: the global blocker exists), then a migratable device with on: FAILS
    state = machine(V10_0)
    results = realize(
        state, dev({}, "no-p2p", "a"), dev({}, "no-p2p", "b"), dev({"enable-migration": "on"}, "migratable", "c")
    )
    assert [r.error for r in results] == [None, None, f"vfio <c>: {P2P_MULTI}"]
    assert state.blockers.reasons == [P2P_MULTI]  # added once


def test_lab_8_three_p2p_devices_have_no_blocker() -> None:
    state = machine(V10_0, host=REBUILT)
    results = realize(state, *(dev({}, "migratable", f"m{i}") for i in range(3)))
    assert all(r.error is None and r.handler is not None for r in results)
    assert state.blockers.is_blocked() is None
    assert vfio_mig_active(state)


def test_lab_8_per_device_dirty_blockers_come_before_the_multiple_devices_check() -> None:
    off = {"x-device-dirty-page-tracking": "off"}
    state = machine(V10_0)
    realize(state, dev(off, "no-p2p", "a"), dev(off, "no-p2p", "b"))
    assert state.blockers.reasons == [f"<b>: {DIRTY_10}", f"<a>: {DIRTY_10}"]
    assert state.multiple_devices_blocker is None
    # ... and on 7.2 every such device is simply "VFIO device doesn't support migration"
    state72 = machine(V7_2)
    realize(state72, dev({}, "no-p2p", "a"), dev({}, "no-p2p", "b"))
    assert state72.blockers.reasons == ["VFIO device doesn't support migration"] * 2


# --- source (vfio_migration_realize, vfio_block_multiple_devices_migration): versions the lab did not run ---


def test_8_0_default_is_blocked_and_enable_migration_does_not_exist() -> None:
    state = machine(V8_0)
    (result,) = realize(state, dev())
    assert state.blockers.is_blocked() == "VFIO device doesn't support migration"
    assert result.handler is None
    (result,) = realize(machine(V8_0), dev({"enable-migration": "on"}))
    assert result.error == "Property 'vfio-pci.enable-migration' not found"


def test_8_0_experimental_migration_global_blockers() -> None:
    on = {"x-enable-migration": "on"}
    state = machine(V8_0, viommu=True)
    results = realize(state, dev(on, "migratable", "a"), dev(on, "no-p2p", "b"))
    assert [r.error for r in results] == [None, None]
    assert all(r.handler is not None for r in results)
    # global texts without a device name, each added once; newest first
    assert state.blockers.reasons == [MULTI_8, VIOMMU]
    # no dirty-tracking requirement in 8.0 (b051a3f640)
    state = machine(V8_0)
    (result,) = realize(state, dev(on, "no-dirty-logging"))
    assert (result.error, state.blockers.is_blocked()) == (None, None)


def test_8_0_enotty_device_and_only_migratable() -> None:
    state = machine(V8_0)
    (result,) = realize(state, dev({"x-enable-migration": "on"}, "no-migration"))
    assert state.blockers.is_blocked() == "VFIO device doesn't support migration"
    assert result.warnings == [f"<vfio0>: {NOT_IN_KERNEL}"]
    (result,) = realize(machine(V8_0, only_migratable=True), dev())
    assert result.error == V1_ONLY_MIGRATABLE


def test_8_1_properties_and_wording() -> None:
    (result,) = realize(machine(V8_1), dev({"x-enable-migration": "on"}))
    assert result.error == "Property 'vfio-pci.x-enable-migration' not found"
    (result,) = realize(machine(V8_1), dev({"x-device-dirty-page-tracking": "off"}))
    assert result.error == "Property 'vfio-pci.x-device-dirty-page-tracking' not found"
    state = machine(V8_1)
    realize(state, dev({}, "no-dirty-logging"))
    assert state.blockers.is_blocked() == "<vfio0>: VFIO device doesn't support device dirty tracking"
    (result,) = realize(machine(V8_1), dev({"enable-migration": "on"}, "no-dirty-logging"))
    assert result.warnings == ["<vfio0>: VFIO device doesn't support device dirty tracking"]


def test_8_1_multiple_devices_no_p2p_rule_and_the_on_bug() -> None:
    # 8.1: any second migratable device triggers the old blocker, P2P or not
    state = machine(V8_1)
    results = realize(state, dev({}, "migratable", "a"), dev({}, "migratable", "b"))
    assert [r.error for r in results] == [None, None]
    assert state.blockers.is_blocked() == MULTI_8
    # an ON device when no blocker exists yet: realize error
    state = machine(V8_1)
    results = realize(state, dev({}, "migratable", "a"), dev({"enable-migration": "on"}, "migratable", "b"))
    assert results[1].error == f"vfio <b>: {MULTI_8}"
    # bug: the global blocker already exists, so an ON device is accepted
    state = machine(V8_1)
    results = realize(
        state, dev({}, "migratable", "a"), dev({}, "migratable", "b"), dev({"enable-migration": "on"}, None, "c")
    )
    assert [r.error for r in results] == [None, None, None]


def test_8_2_fixes_the_on_bug_and_allows_p2p_devices() -> None:
    state = machine(V8_2)
    results = realize(state, dev({}, "migratable", "a"), dev({}, "migratable", "b"))
    assert state.blockers.is_blocked() is None
    state = machine(V8_2)
    results = realize(
        state, dev({}, "no-p2p", "a"), dev({}, "no-p2p", "b"), dev({"enable-migration": "on"}, None, "c")
    )
    assert [r.error for r in results] == [None, None, f"vfio <c>: {P2P_MULTI}"]


@pytest.mark.parametrize("version", [V8_1, V8_2, V9_0])
def test_before_9_1_wording_is_device_dirty_tracking(version: Version) -> None:
    state = machine(version, viommu=True)
    realize(state, dev({}, "no-dirty-logging"))
    assert state.blockers.is_blocked() == "<vfio0>: VFIO device doesn't support device dirty tracking"


@pytest.mark.parametrize("version", [V9_1, V10_0, V10_2])
def test_from_9_1_wording_and_x_device_dirty_page_tracking(version: Version) -> None:
    state = machine(version)
    realize(state, dev({"x-device-dirty-page-tracking": "off", "migration-events": "on"}))
    assert state.blockers.is_blocked() == f"<vfio0>: {DIRTY_10}"


def test_failover_primary_does_nothing() -> None:
    state = machine(V10_0, only_migratable=True, viommu=True)
    (result,) = realize(state, dev({"failover_pair_id": "net0", "enable-migration": "off"}, "no-migration"))
    assert (result.error, result.handler, result.warnings) == (None, None, [])
    assert state.blockers.reasons == [] and state.migratable == []


def test_handlers_stay_registered_on_blocker_paths() -> None:
    # vfio_migration_realize: on the dirty-tracking and vIOMMU blocker paths the handlers stay, so the device counts
    # for the multiple-devices rule; OFF and init failures register none.
    state = machine(V10_0, viommu=True)
    results = realize(
        state,
        dev({}, "no-dirty-logging", "a"),
        dev({}, "no-p2p", "b"),
        dev({"enable-migration": "off"}, None, "c"),
        dev({}, "no-migration", "d"),
    )
    assert [r.handler is not None for r in results] == [True, True, False, False]
    assert [getattr(h, "name", None) for h in state.migratable] == ["<a>", "<b>"]
    # b: second counted device, no P2P -> the global blocker, then b's own vIOMMU blocker (newest first)
    assert state.blockers.reasons == [
        f"<d>: {NOT_IN_KERNEL}",
        f"<c>: {DISABLED}",
        f"<b>: {VIOMMU}",
        P2P_MULTI,
        "<a>: VFIO device doesn't support device and IOMMU dirty tracking",
    ]


def test_failed_realize_unregisters_handlers() -> None:
    state = machine(V10_0, viommu=True)
    (result,) = realize(state, dev({"enable-migration": "on"}))
    assert result.error is not None and result.handler is None and state.migratable == []


def test_unknown_personality_is_an_error_naming_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="allowed: migratable, no-p2p"):
        realize(machine(), dev({}, "fast"))
