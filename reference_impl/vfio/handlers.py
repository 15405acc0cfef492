"""The savevm entry a migratable VFIO device registers (``savevm_vfio_handlers``, hw/vfio/migration.c).

Two things matter to the core model: ``save_prepare`` (8.2+), which refuses ``migrate`` with postcopy-ram
or background-snapshot (vfio_save_prepare), and whether a migration that is accepted will fail anyway because
the device's advertised DMA-logging report does not work (docs/vfio-lab.md, measured gating results and P3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contract.versions import V8_0, V8_2, V9_1, Version
from reference_impl.savevm import PrepareContext, SaveVMHandlers
from reference_impl.vfio.personality import DmaLogging, OnOffAuto, VfioPersonality, VfioProperties
from reference_impl.vfio.uapi import MigrationFlag

# Measured on 10.0.2 (docs/vfio-lab.md, measured gating results: default precopy): the first dirty sync in
# ram_save_setup asks the
# device for its DMA-logging report, the stub iova_bitmap returns -EOPNOTSUPP, and the migration fails.
DIRTY_REPORT_FAILURE = "ram_save_setup failed: Operation not supported"
# With x-pre-copy-dirty-page-tracking=off QEMU skips the syncs while the device runs, so the first report
# is requested at switchover; the migration still fails, with a message no lab run has recorded yet.
DIRTY_REPORT_FAILURE_AT_SWITCHOVER = "VFIO DMA-logging report fails at switchover (message not measured)"


@dataclass
class VfioSaveHandlers:
    """Implements :class:`reference_impl.savevm.SaveVMHandlers` for one vfio-pci device."""

    name: str  # vbasedev->name (the model's placeholder, e.g. "<vfio0>")
    version: Version
    personality: VfioPersonality
    properties: VfioProperties

    @property
    def idstr(self) -> str:
        # QEMU: "<qdev path>/vfio", e.g. "0000:00:02.0/vfio"; the device name stands in for the PCI path.
        return f"{self.name}/vfio"

    @property
    def migration_flags(self) -> MigrationFlag:
        # Handlers exist only after FEATURE_MIGRATION succeeded with STOP_COPY, so flags are never None here.
        return self.personality.migration_flags or MigrationFlag.STOP_COPY

    def is_active(self) -> bool:
        # VFIO has no is_active callback: savevm treats a missing one as active.
        return True

    def save_prepare(self, ctx: PrepareContext) -> str | None:
        """``vfio_save_prepare`` (8.2+; before 8.2 nothing stops postcopy or background snapshot)."""
        if self.version < V8_2:
            return None
        if ctx.runstate == "save-vm":
            # Snapshots use neither postcopy nor background snapshot (comment in vfio_save_prepare).
            return None
        # migrate_postcopy_ram(): postcopy-ram only; dirty-bitmaps alone does not trigger (docs/vfio-lab.md, measured
        # gating results: later findings).
        if ctx.capabilities.get("postcopy-ram", False):
            return f"{self.name}: VFIO migration is not supported with postcopy migration"
        if ctx.capabilities.get("background-snapshot", False):
            return f"{self.name}: VFIO migration is not supported with background snapshot"
        return None

    def uses_device_dirty_tracking(self) -> bool:
        """Whether this device would use its own DMA logging (before looking at the other devices).

        QEMU picks device tracking when the realize-time PROBE succeeded and, from 9.1, the user did not set
        ``x-device-dirty-page-tracking=off``. 7.2 (v1 protocol) has no device tracking.
        """
        if self.version < V8_0 or not self.personality.device_dirty_tracking_probe:
            return False
        return not (self.version >= V9_1 and self.properties.x_device_dirty_page_tracking is OnOffAuto.OFF)

    def migration_failure(self, ctx: PrepareContext) -> str | None:
        """The error-desc a migration that ``migrate`` accepted ends with because of this device, else None.

        Only one cause is modelled: DMA logging that the device advertises but whose report fails (stock
        Debian 6.12 vfio.ko, lab P3). Use :func:`vfio_migration_failure` for a VM with several devices:
        device tracking is used only if every device in the container supports it.
        """
        del ctx  # the failure does not depend on capabilities once save_prepare has passed
        if not self.uses_device_dirty_tracking() or self.personality.dma_logging is not DmaLogging.REPORT_FAILS:
            return None
        if self.properties.x_pre_copy_dirty_page_tracking is OnOffAuto.OFF:
            return DIRTY_REPORT_FAILURE_AT_SWITCHOVER
        return DIRTY_REPORT_FAILURE


def vfio_migration_failure(handlers: Sequence[SaveVMHandlers], ctx: PrepareContext) -> str | None:
    """Whether an accepted migration of a VM with these savevm entries fails because of VFIO.

    ``vfio_devices_all_device_dirty_tracking``: the container uses device DMA logging only when all its
    devices support it; otherwise it falls back to the type1 bitmap and a broken report is never asked for.
    The model puts all vfio-pci devices of a VM in one container (QEMU shares a container per address
    space). Non-VFIO entries in ``handlers`` are ignored.
    """
    vfio = [h for h in handlers if isinstance(h, VfioSaveHandlers)]
    if not vfio or not all(h.uses_device_dirty_tracking() for h in vfio):
        return None
    for handler in vfio:
        failure = handler.migration_failure(ctx)
        if failure is not None:
            return failure
    return None
