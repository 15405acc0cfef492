"""The interface between the migration-core model and the VFIO model.

The core model (reference_impl.machine / predict) realizes a VM's devices in command-line order. For each
``vfio-pci`` device it calls :func:`reference_impl.vfio.realize.vfio_realize` with the VM's
:class:`VfioMachineState`, which mirrors ``vfio_migration_realize()`` (hw/vfio/migration.c) and the
global multiple-devices blocker (hw/vfio/common.c / migration.c). The result either fails realize
(QEMU refuses to start) or registers blockers and, for devices with migration state, a
:class:`~reference_impl.savevm.SaveVMHandlers` entry whose ``save_prepare`` gates ``migrate``.

Device names: QEMU names a VFIO device by ``vbasedev->name`` (the host BDF, or the mdev UUID). The model
cannot know it, so it writes the placeholder ``<ID>`` (the device's ``id`` property, or
``vfio-pci#N`` for the N-th unnamed vfio-pci device, counting from 0). The comparison replaces each host
name the provider allocated with the same placeholder.

Predicting a migration that ``migrate`` accepts but that fails (additive, VFIO helper): the registered
handlers are :class:`reference_impl.vfio.handlers.VfioSaveHandlers`. Once ``qemu_savevm_state_prepare``
has passed, call :func:`reference_impl.vfio.handlers.vfio_migration_failure` with the VM's handlers and the
same :class:`~reference_impl.savevm.PrepareContext`; it returns the source's ``error-desc`` (e.g.
"ram_save_setup failed: Operation not supported" when the device advertises DMA logging but the host's
report fails, HostFacts.vfio_dirty_report_works=False) and the migration's verdict is then ``failed``, or
None when VFIO does not make it fail. ``VfioSaveHandlers.migration_failure(ctx)`` is the per-device part
(it ignores the rule that device tracking is used only when every device of the container supports it).
The device-state sequences QEMU drives, for comparison with VFIO_MIGRATION events, are in
:mod:`reference_impl.vfio.sequences`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.host import HostFacts
from contract.versions import Version
from reference_impl.blockers import MigrationBlockers
from reference_impl.savevm import SaveVMHandlers


def placeholder_name(device_id: str | None, index: int) -> str:
    """The model's stand-in for ``vbasedev->name``."""
    return f"<{device_id}>" if device_id else f"<vfio-pci#{index}>"


@dataclass
class VfioMachineState:
    """Per-VM VFIO state shared by all its vfio-pci devices during realize."""

    version: Version
    host: HostFacts
    blockers: MigrationBlockers
    # A vIOMMU (intel-iommu, amd-iommu, virtio-iommu) was created before the device being realized.
    viommu: bool = False
    # Devices realized so far that have migration state (registered handlers), in order.
    migratable: list[SaveVMHandlers] = field(default_factory=list)
    # The global "multiple devices" blocker text, once added (8.0+).
    multiple_devices_blocker: str | None = None
    # Bookkeeping the VFIO model may use (e.g. per-device flags).
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class VfioRealized:
    """What realize of one vfio-pci device did."""

    # The realize error as it appears in the outcome record (QEMU's message without the
    # "qemu-system-x86_64: -device ...: " prefix), e.g. "vfio <vfio0>: <vfio0>: Migration is ...".
    error: str | None = None
    # Registered savevm handlers (the device has migration state), else None.
    handler: SaveVMHandlers | None = None
    # warn_report lines (not compared; informational).
    warnings: list[str] = field(default_factory=list)
    # The device's own migration blocker (vbasedev->migration_blocker), already added to the VM's
    # MigrationBlockers; None when it has none. Global blockers (multiple devices; 8.0's vIOMMU) are not
    # listed here. Any per-device blocker hides ``vfio`` in query-migrate (realize.vfio_mig_active).
    blocker: str | None = None
