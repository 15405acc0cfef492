"""Realize of one vfio-pci device, as far as migration is concerned, per QEMU version.

Mirrors ``vfio_migration_realize()`` with ``vfio_block_migration()`` and the global multiple-devices
blocker (hw/vfio/migration.c, hw/vfio/common.c: vfio_migration_realize, vfio_block_multiple_devices_migration), checked
against real QEMU 10.0.2 and 7.2.22 runs with an mtty device (docs/vfio-lab.md, measured gating results). The check
order from 8.1 on is: OFF, init (FEATURE_MIGRATION), dirty tracking, multiple devices, vIOMMU; the first problem
decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.scenario import DeviceSpec
from contract.versions import V8_0, V8_1, V8_2, V9_1
from reference_impl.vfio.api import VfioMachineState, VfioRealized
from reference_impl.vfio.handlers import VfioSaveHandlers
from reference_impl.vfio.personality import (
    OnOffAuto,
    VfioPersonality,
    VfioProperties,
    VfioPropertyError,
    parse_properties,
    personality_for,
)
from reference_impl.vfio.uapi import MigrationFlag

V1_BLOCKER = "VFIO device doesn't support migration"
MULTIPLE_DEVICES_8_0 = "Migration is currently not supported with multiple VFIO devices"
MULTIPLE_DEVICES_P2P = "Multiple VFIO devices migration is supported only if all of them support P2P migration"
VIOMMU_GLOBAL_8_0 = "Migration is currently not supported with vIOMMU enabled"

# Keys in VfioMachineState.extra used by this module.
_VIOMMU_BLOCKER_KEY = "vfio.viommu_blocker"  # 8.0's global vIOMMU blocker text, once added
_DEVICES_KEY = "vfio.devices"  # list[VfioDeviceRecord], every realized vfio-pci device in order


@dataclass
class VfioDeviceRecord:
    """What ``vfio_mig_active`` and query-migrate need to know about a realized device."""

    name: str
    blocker: str | None  # vbasedev->migration_blocker (per-device blocker), if any
    handler: VfioSaveHandlers | None


@dataclass
class _Realize:
    """One realize in progress: the device, its state and what it has done so far."""

    name: str
    state: VfioMachineState
    props: VfioProperties
    personality: VfioPersonality
    warnings: list[str] = field(default_factory=list)
    handler: VfioSaveHandlers | None = None
    blocker: str | None = None

    def done(self, error: str | None = None) -> VfioRealized:
        if error is not None:
            self._deinit()
        else:
            records = self.state.extra.setdefault(_DEVICES_KEY, [])
            assert isinstance(records, list)
            records.append(VfioDeviceRecord(self.name, self.blocker, self.handler))
        return VfioRealized(error=error, handler=self.handler, warnings=self.warnings, blocker=self.blocker)

    def register_handlers(self) -> None:
        """``vfio_migration_init`` succeeded: savevm handlers exist and the device counts as migratable."""
        self.handler = VfioSaveHandlers(self.name, self.state.version, self.personality, self.props)
        self.state.migratable.append(self.handler)

    def _deinit(self) -> None:
        # vfio_migration_deinit: the handlers go away (realize failed, so QEMU exits anyway).
        if self.handler is not None:
            self.state.migratable.remove(self.handler)
            self.handler = None


def vfio_realize(device: DeviceSpec, name: str, state: VfioMachineState) -> VfioRealized:
    """Realize ``device`` (a vfio-pci DeviceSpec) named ``name`` in a VM with ``state``."""
    try:
        props = parse_properties(device.properties, state.version)
    except VfioPropertyError as err:
        # Property errors come before the device is opened: no "vfio <name>: " prefix.
        return VfioRealized(error=str(err))
    if props.failover_pair_id:
        # vfio_realize skips migration entirely for a failover primary: no blocker, no handlers.
        return VfioRealized()
    r = _Realize(name, state, props, personality_for(device.personality, state.host))
    if state.version < V8_0:
        return _realize_v1(r)
    if state.version < V8_1:
        return _realize_8_0(r)
    return _realize_8_1(r)


def vfio_mig_active(state: VfioMachineState) -> bool:
    """Whether query-migrate shows ``vfio: {transferred}``: some VFIO device exists and none has its own
    blocker (``vfio_mig_active``; the global multiple-devices/vIOMMU blockers do not count).

    For blocked devices query-migrate shows, even in status none, ``blocked-reasons`` with every blocker
    newest first (``MigrationBlockers.blocked_reasons``), and ``migrate`` fails with the newest one
    (docs/vfio-lab.md, measured gating results: "query-migrate's `blocked-reasons` carry the same texts").
    """
    records = state.extra.get(_DEVICES_KEY, [])
    assert isinstance(records, list)
    return bool(records) and all(rec.blocker is None for rec in records)


def _add_blocker_7x(r: _Realize, reason: str) -> VfioRealized | None:
    """7.2/8.0: ``migrate_add_blocker``; failure fails realize with errp unprefixed, after the
    ``error_report("%s: Migration disabled")`` of vfio_realize (docs/vfio-lab.md, measured gating results: 7.2.22)."""
    errp = r.state.blockers.add(reason)
    if errp is not None:
        r.warnings.append(f"{r.name}: Migration disabled")
        return r.done(error=errp)
    return None


def _realize_v1(r: _Realize) -> VfioRealized:
    """7.2: only the v1 migration region exists in QEMU, and kernels since 5.18 no longer offer it, so every
    device is blocked even with x-enable-migration=on (docs/vfio-lab.md, measured gating results: 7.2.22). A v1-capable
    host is modelled as migratable without any further check (the model's hosts never have one)."""
    if r.state.host.vfio_v1_region and r.props.x_enable_migration and r.personality.migration_flags is not None:
        r.register_handlers()
        return r.done()
    r.blocker = V1_BLOCKER
    return _add_blocker_7x(r, V1_BLOCKER) or r.done()


def _realize_8_0(r: _Realize) -> VfioRealized:
    """8.0: v2 protocol but still experimental (x-enable-migration, default off); global blockers."""
    flags = r.personality.migration_flags
    if r.props.x_enable_migration and flags is None:
        r.warnings.append(f"{r.name}: VFIO migration is not supported in kernel")
    if not r.props.x_enable_migration or flags is None or not flags & MigrationFlag.STOP_COPY:
        r.blocker = V1_BLOCKER
        return _add_blocker_7x(r, V1_BLOCKER) or r.done()
    r.register_handlers()
    state = r.state
    if len(state.migratable) > 1 and state.multiple_devices_blocker is None:
        failed = _add_blocker_7x(r, MULTIPLE_DEVICES_8_0)
        if failed is not None:
            return failed
        state.multiple_devices_blocker = MULTIPLE_DEVICES_8_0
    if state.viommu and _VIOMMU_BLOCKER_KEY not in state.extra:
        failed = _add_blocker_7x(r, VIOMMU_GLOBAL_8_0)
        if failed is not None:
            return failed
        state.extra[_VIOMMU_BLOCKER_KEY] = VIOMMU_GLOBAL_8_0
    return r.done()


def _block_migration(r: _Realize, err: str) -> VfioRealized:
    """``vfio_block_migration``: ON turns the reason into a realize error; AUTO/OFF add a per-device
    blocker, and only a refused blocker (--only-migratable) fails realize. Realize errors get the
    ``vfio <name>: `` prefix of vfio_realize. (9.0+ adds it with migrate_add_blocker_normal: it blocks only
    the normal migration mode, which is the only mode the model runs.)"""
    if r.props.enable_migration is OnOffAuto.ON:
        return r.done(error=f"vfio {r.name}: {err}")
    errp = r.state.blockers.add(err)
    if errp is not None:
        return r.done(error=f"vfio {r.name}: {errp}")
    r.blocker = err
    return r.done()


def _realize_8_1(r: _Realize) -> VfioRealized:
    """8.1 and later (enable-migration=on|off|auto)."""
    name, version, state = r.name, r.state.version, r.state
    on = r.props.enable_migration is OnOffAuto.ON
    if r.props.enable_migration is OnOffAuto.OFF:
        return _block_migration(r, f"{name}: Migration is disabled for VFIO device")

    flags = r.personality.migration_flags
    if flags is None:
        return _block_migration(r, f"{name}: VFIO migration is not supported in kernel")
    if not flags & MigrationFlag.STOP_COPY:
        return _block_migration(
            r, f"{name}: Migration couldn't be initialized for VFIO device, err: -95 (Operation not supported)"
        )
    r.register_handlers()

    no_dirty_tracking = not r.personality.device_dirty_tracking_probe
    wording = "device dirty tracking"
    if version >= V9_1:  # f48b472450, 30b9167785
        no_dirty_tracking = (
            no_dirty_tracking or r.props.x_device_dirty_page_tracking is OnOffAuto.OFF
        ) and not r.personality.iommu_dirty_tracking
        wording = "device and IOMMU dirty tracking"
    if no_dirty_tracking:
        message = f"{name}: VFIO device doesn't support {wording}"
        if not on:
            return _block_migration(r, message)
        r.warnings.append(message)

    if version < V8_2:
        # 8.1: the early return when the global blocker exists also lets an ON device through (fixed in
        # 8.2 by 8118349b1b).
        if state.multiple_devices_blocker is None and len(state.migratable) > 1:
            if on:
                return r.done(error=f"vfio {name}: {MULTIPLE_DEVICES_8_0}")
            errp = state.blockers.add(MULTIPLE_DEVICES_8_0)
            if errp is not None:
                return r.done(error=f"vfio {name}: {errp}")
            state.multiple_devices_blocker = MULTIPLE_DEVICES_8_0
    elif not _multiple_devices_supported(state):
        if on:
            return r.done(error=f"vfio {name}: {MULTIPLE_DEVICES_P2P}")
        if state.multiple_devices_blocker is None:
            errp = state.blockers.add(MULTIPLE_DEVICES_P2P)
            if errp is not None:
                return r.done(error=f"vfio {name}: {errp}")
            state.multiple_devices_blocker = MULTIPLE_DEVICES_P2P

    if state.viommu:
        return _block_migration(r, f"{name}: Migration is currently not supported with vIOMMU enabled")
    return r.done()


def _multiple_devices_supported(state: VfioMachineState) -> bool:
    """``vfio_multiple_devices_migration_is_supported`` (8.2+): one device, or all of them have P2P."""
    if len(state.migratable) <= 1:
        return True
    return all(
        isinstance(h, VfioSaveHandlers) and bool(h.migration_flags & MigrationFlag.P2P) for h in state.migratable
    )
