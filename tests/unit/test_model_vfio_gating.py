"""The migration core's side of VFIO: realize errors end startup, handlers gate migrate via save_prepare
(8.2+), blockers win over save_prepare. Only through predict(); the VFIO model itself is tested elsewhere.

Expected texts: the mtty lab on real QEMU 10.0.2 / 7.2.22 (docs/vfio-lab.md, measured gating results) with
the model's <ID> placeholder for the host device name (reference_impl/vfio/api.py).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from contract.host import HostFacts
from contract.scenario import DeviceSpec, MigrationSpec, Scenario, VmSpec
from reference_impl import predict

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("reference_impl.vfio.realize") is None,
    reason="reference_impl.vfio.realize not available yet",
)

HOST = HostFacts()


def vfio_vm(*args: str, **properties: str) -> VmSpec:
    return VmSpec(args=args, devices=(DeviceSpec("vfio-pci", id="vfio0", properties=properties),))


def run(
    vm: VmSpec, version: str = "10.0", host: HostFacts = HOST, **migration: Any
) -> tuple[str, str | None, str | None]:
    outcome = predict(Scenario("v", source=vm, destination=vm, migration=MigrationSpec(**migration)), version, host)
    return outcome.verdict, outcome.stage, outcome.error


def test_postcopy_refused_by_save_prepare() -> None:
    # lab, postcopy-ram: caps accepted on both sides; migrate -> "<uuid>: VFIO migration is not supported with postcopy
    # migration"
    assert run(vfio_vm(), capabilities={"postcopy-ram": True}, mode="postcopy") == (
        "refused", "migrate", "<vfio0>: VFIO migration is not supported with postcopy migration")


def test_background_snapshot_refused_by_save_prepare() -> None:
    # lab, background-snapshot
    assert run(vfio_vm(), mode="background-snapshot") == (
        "refused", "migrate", "<vfio0>: VFIO migration is not supported with background snapshot")


def test_viommu_before_device_fails_realize_with_on() -> None:
    # lab, enable-migration against blockers: intel-iommu first + enable-migration=on -> startup refusal
    verdict, stage, error = run(vfio_vm("-device", "intel-iommu,caching-mode=on", **{"enable-migration": "on"}))
    assert (verdict, stage) == ("refused", "startup")
    assert error == "vfio <vfio0>: <vfio0>: Migration is currently not supported with vIOMMU enabled"


def test_blocker_wins_over_save_prepare() -> None:
    # vfio_save_prepare: migration_is_blocked runs before save_prepare (lab, enable-migration against blockers: off ->
    # the disabled blocker)
    assert run(vfio_vm(**{"enable-migration": "off"}), capabilities={"postcopy-ram": True}, mode="postcopy") == (
        "refused", "migrate", "<vfio0>: Migration is disabled for VFIO device")


def test_7_2_is_always_blocked() -> None:
    # lab, 7.2.22: 7.2.22 -> "VFIO device doesn't support migration"
    assert run(vfio_vm(), "7.2") == ("refused", "migrate", "VFIO device doesn't support migration")


def test_broken_dirty_report_fails_the_migration() -> None:
    # lab, default precopy: accepted, then failed with error-desc "ram_save_setup failed: Operation not supported"
    verdict, stage, error = run(vfio_vm(), host=HostFacts(vfio_dirty_report_works=False))
    assert (verdict, stage, error) == ("failed", "migration", "ram_save_setup failed: Operation not supported")


def test_dirty_report_failure_passes_through_active() -> None:
    # suite vfio-precopy-migratable, real 10.0.2 in the stock mtty lab (2026-11-25 23:00): source events
    # setup, active, failed (migration_thread moves setup -> active before handling the setup failure).
    vm = vfio_vm()
    scenario = Scenario("v", source=vm, destination=vm, migration=MigrationSpec(capabilities={"events": True}))
    outcome = predict(scenario, "10.0", HostFacts(vfio_dirty_report_works=False))
    assert outcome.events is not None and outcome.events["source"] == ["setup", "active", "failed"]
