"""VFIO's save_prepare gate and the predicted migration failure (vfio_save_prepare; docs/vfio-lab.md, measured gating
results and P3)."""

from __future__ import annotations

import pytest

from contract.host import HostFacts
from contract.scenario import DeviceSpec
from contract.versions import V8_0, V8_1, V8_2, V9_0, V10_0, Version
from reference_impl.blockers import MigrationBlockers
from reference_impl.savevm import PrepareContext, SaveVMHandlers, qemu_savevm_state_prepare
from reference_impl.vfio.api import VfioMachineState
from reference_impl.vfio.handlers import (
    DIRTY_REPORT_FAILURE,
    DIRTY_REPORT_FAILURE_AT_SWITCHOVER,
    VfioSaveHandlers,
    vfio_migration_failure,
)
from reference_impl.vfio.realize import vfio_realize

POSTCOPY = "<vfio0>: VFIO migration is not supported with postcopy migration"
BG_SNAPSHOT = "<vfio0>: VFIO migration is not supported with background snapshot"


def handlers_for(
    *devices: DeviceSpec, version: Version = V10_0, report_works: bool = False
) -> list[SaveVMHandlers]:
    state = VfioMachineState(version, HostFacts(vfio_dirty_report_works=report_works), MigrationBlockers())
    for index, device in enumerate(devices):
        result = vfio_realize(device, f"<{device.id or f'vfio-pci#{index}'}>", state)
        assert result.error is None, result.error
    return state.migratable


def one(
    props: dict[str, str] | None = None, version: Version = V10_0, personality: str | None = None
) -> VfioSaveHandlers:
    (handler,) = handlers_for(DeviceSpec("vfio-pci", "vfio0", props or {}, personality), version=version)
    assert isinstance(handler, VfioSaveHandlers)
    return handler


@pytest.mark.parametrize(
    ("caps", "runstate", "expected"),
    [
        # lab, postcopy-ram: postcopy-ram accepted by set-capabilities, refused by migrate
        ({"postcopy-ram": True}, "running", POSTCOPY),
        # lab, background-snapshot: background-snapshot refused by migrate
        ({"background-snapshot": True}, "running", BG_SNAPSHOT),
        # vfio_save_prepare: postcopy is checked first
        ({"postcopy-ram": True, "background-snapshot": True}, "running", POSTCOPY),
        # lab, later findings: dirty-bitmaps alone (migrate_postcopy() true) does not trigger; it migrated
        ({"dirty-bitmaps": True}, "running", None),
        ({"postcopy-ram": False}, "paused", None),
        # vfio_save_prepare: snapshot path (runstate save-vm) is allowed even with postcopy-ram on
        ({"postcopy-ram": True}, "save-vm", None),
        # a paused VM is not relabelled by savevm: the postcopy message (a vfio_save_prepare subtlety)
        ({"postcopy-ram": True}, "paused", POSTCOPY),
    ],
)
def test_save_prepare_10_0(caps: dict[str, bool], runstate: str, expected: str | None) -> None:
    handler = one()
    assert handler.idstr == "<vfio0>/vfio"
    assert handler.is_active()
    assert handler.save_prepare(PrepareContext(caps, runstate)) == expected
    assert qemu_savevm_state_prepare([handler], PrepareContext(caps, runstate)) == expected


@pytest.mark.parametrize("version", [V8_0, V8_1])
def test_no_save_prepare_before_8_2(version: Version) -> None:
    props = {"x-enable-migration": "on"} if version < V8_1 else {}
    handler = one(props, version)
    assert handler.save_prepare(PrepareContext({"postcopy-ram": True}, "running")) is None
    assert handler.save_prepare(PrepareContext({"background-snapshot": True}, "running")) is None


@pytest.mark.parametrize("version", [V8_2, V9_0])
def test_save_prepare_exists_from_8_2(version: Version) -> None:
    assert one(version=version).save_prepare(PrepareContext({"background-snapshot": True}, "running")) == BG_SNAPSHOT


def test_first_refusing_device_wins_in_registration_order() -> None:
    handlers = handlers_for(
        DeviceSpec("vfio-pci", "a", {}, "migratable"), DeviceSpec("vfio-pci", "b", {}, "migratable"),
        report_works=True,
    )
    assert qemu_savevm_state_prepare(handlers, PrepareContext({"postcopy-ram": True}, "running")) == (
        "<a>: VFIO migration is not supported with postcopy migration"
    )


CTX = PrepareContext({}, "running")


def test_migration_failure_stock_kernel_default_props() -> None:
    # lab, default precopy: accepted, then failed with "ram_save_setup failed: Operation not supported"
    handler = one()
    assert handler.migration_failure(CTX) == DIRTY_REPORT_FAILURE == "ram_save_setup failed: Operation not supported"
    assert vfio_migration_failure([handler], CTX) == DIRTY_REPORT_FAILURE


def test_migration_failure_workaround_props_complete() -> None:
    # lab, default precopy: x-device-dirty-page-tracking=off + on completes (type1 bitmap instead)
    handler = one({"x-device-dirty-page-tracking": "off", "enable-migration": "on"})
    assert not handler.uses_device_dirty_tracking()
    assert vfio_migration_failure([handler], CTX) is None


def test_migration_failure_rebuilt_kernel_completes() -> None:
    (handler,) = handlers_for(DeviceSpec("vfio-pci", "vfio0"), report_works=True)
    assert vfio_migration_failure([handler], CTX) is None


def test_migration_failure_needs_every_device_on_device_tracking() -> None:
    # vfio_devices_all_device_dirty_tracking: device DMA logging only when all devices in the container support it; a
    # device without
    # DMA logging sends the container to the type1 bitmap, so the broken report is never requested.
    handlers = handlers_for(
        DeviceSpec("vfio-pci", "a", {"enable-migration": "on"}, "migratable"),
        DeviceSpec("vfio-pci", "b", {"enable-migration": "on"}, "no-dirty-logging"),
    )
    first = handlers[0]
    assert isinstance(first, VfioSaveHandlers)
    assert first.migration_failure(CTX) == DIRTY_REPORT_FAILURE  # alone it would fail
    assert vfio_migration_failure(handlers, CTX) is None


def test_migration_failure_without_precopy_syncs_is_still_a_failure() -> None:
    handler = one({"x-pre-copy-dirty-page-tracking": "off"})
    assert handler.migration_failure(CTX) == DIRTY_REPORT_FAILURE_AT_SWITCHOVER


def test_no_device_dirty_tracking_before_8_0_handlers() -> None:
    assert vfio_migration_failure([], CTX) is None
    handler = one({"x-enable-migration": "on"}, V8_0)
    assert handler.uses_device_dirty_tracking()  # 8.0 already used DMA logging when offered
