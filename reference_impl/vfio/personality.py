"""What a VFIO device offers (its kernel driver's personality) and the vfio-pci properties QEMU reads.

QEMU's gating depends on two things outside QEMU: the migration flags the kernel driver reports
(``VFIO_DEVICE_FEATURE_MIGRATION``; a driver without migration ops answers ENOTTY) and whether device DMA
logging is offered and actually works. The scenario names a personality; the host facts decide whether an
advertised DMA-logging report really works (stock Debian 6.12 vfio.ko: it does not, docs/vfio-lab.md P3).

The second half of this module parses the migration-relevant ``-device vfio-pci`` properties the way QEMU
does before realize, so a property a version lacks fails exactly as QEMU's property code says
(docs/vfio-lab.md, measured gating results: 7.2.22; messages checked against real 7.2.22 and 10.0.2 binaries).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from contract.host import HostFacts
from contract.versions import V7_2, V8_1, V9_1, V10_0, V10_1, Version
from reference_impl.vfio.uapi import MigrationFlag


class DmaLogging(Enum):
    """Device DMA logging (``VFIO_DEVICE_FEATURE_DMA_LOGGING_*``) as QEMU experiences it."""

    WORKS = "works"
    MISSING = "missing"  # the PROBE fails: QEMU sees no device dirty tracking
    REPORT_FAILS = "advertised-but-report-fails"  # PROBE and START succeed, every REPORT fails (-EOPNOTSUPP)


@dataclass(frozen=True)
class VfioPersonality:
    name: str
    # None: the driver has no migration ops (FEATURE_MIGRATION -> ENOTTY).
    migration_flags: MigrationFlag | None
    dma_logging: DmaLogging
    # IOMMUFD HWPT dirty tracking. Only iommufd= backends have it; the model's legacy type1 container never
    # does (type1's own bitmap marks every pinned page dirty and does not count,
    # vfio_devices_all_device_dirty_tracking).
    iommu_dirty_tracking: bool = False

    @property
    def device_dirty_tracking_probe(self) -> bool:
        """``vfio_dma_logging_supported()``: what QEMU's realize-time probe concludes."""
        return self.dma_logging is not DmaLogging.MISSING


_ADVERTISED = DmaLogging.WORKS  # replaced by REPORT_FAILS when the host's report is broken
_F = MigrationFlag
# The contract's named personalities (docs/scenario-format.md, `[[vm.device]]` personality).
PERSONALITIES: dict[str, VfioPersonality] = {
    "migratable": VfioPersonality("migratable", _F.STOP_COPY | _F.P2P | _F.PRE_COPY, _ADVERTISED),
    "no-p2p": VfioPersonality("no-p2p", _F.STOP_COPY | _F.PRE_COPY, _ADVERTISED),
    "no-precopy": VfioPersonality("no-precopy", _F.STOP_COPY | _F.P2P, _ADVERTISED),
    "no-dirty-logging": VfioPersonality("no-dirty-logging", _F.STOP_COPY | _F.P2P | _F.PRE_COPY, DmaLogging.MISSING),
    # mdpy: a sample mdev without migration support (docs/vfio-lab.md, measured gating results: enable-migration
    # against blockers).
    "no-migration": VfioPersonality("no-migration", None, DmaLogging.MISSING),
}
DEFAULT_PERSONALITY = "migratable"


def personality_for(name: str | None, host: HostFacts) -> VfioPersonality:
    """The personality a device gets on this host; advertised DMA logging works only if the host's does."""
    key = name or DEFAULT_PERSONALITY
    try:
        base = PERSONALITIES[key]
    except KeyError:
        raise ValueError(f"unknown VFIO personality {key!r} (allowed: {', '.join(PERSONALITIES)})") from None
    if base.dma_logging is DmaLogging.WORKS and not host.vfio_dirty_report_works:
        return VfioPersonality(base.name, base.migration_flags, DmaLogging.REPORT_FAILS, base.iommu_dirty_tracking)
    return base


# ---------------------------------------------------------------------------------------------------------
# Properties


class OnOffAuto(Enum):
    ON = "on"
    OFF = "off"
    AUTO = "auto"


class VfioPropertyError(ValueError):
    """Setting a -device property failed; ``str(err)`` is QEMU's message (no "vfio <name>: " prefix)."""


@dataclass(frozen=True)
class _PropDef:
    kind: str  # "bool" | "OnOffAuto" | "size" | "str"
    since: Version
    until: Version | None = None  # first version without it


# Migration-relevant vfio-pci properties and the versions that have them (hw/vfio/pci.c vfio_pci_dev_properties).
PROPERTY_DEFS: dict[str, _PropDef] = {
    "x-enable-migration": _PropDef("bool", V7_2, until=V8_1),
    "enable-migration": _PropDef("OnOffAuto", V8_1),
    "x-pre-copy-dirty-page-tracking": _PropDef("OnOffAuto", V7_2),
    "x-device-dirty-page-tracking": _PropDef("OnOffAuto", V9_1),
    "migration-events": _PropDef("bool", V9_1),
    "x-migration-multifd-transfer": _PropDef("OnOffAuto", V10_0),
    "x-migration-load-config-after-iter": _PropDef("OnOffAuto", V10_1),
    "x-migration-max-queued-buffers-size": _PropDef("size", V10_1),
    "failover_pair_id": _PropDef("str", V7_2),
}

_BOOL_TRUE = ("on", "yes", "true", "y")
_BOOL_FALSE = ("off", "no", "false", "n")


@dataclass(frozen=True)
class VfioProperties:
    """The properties QEMU's VFIO migration code reads, with each version's default."""

    x_enable_migration: bool = False  # 7.2-8.0
    enable_migration: OnOffAuto = OnOffAuto.AUTO  # 8.1+
    x_pre_copy_dirty_page_tracking: OnOffAuto = OnOffAuto.ON
    x_device_dirty_page_tracking: OnOffAuto = OnOffAuto.ON  # 9.1+
    migration_events: bool = False  # 9.1+
    failover_pair_id: str | None = None


def qdict_bucket(key: str) -> int:
    """QEMU's ``tdb_hash(key) % QDICT_BUCKET_MAX`` (qobject/qdict.c).

    -device options become a QDict and are applied in bucket order, so when several properties are wrong
    the first bucket decides the message (7.2 with x-device-dirty-page-tracking and enable-migration
    always names enable-migration, whatever their order, docs/vfio-lab.md, measured gating results: 7.2.22).
    """
    data = key.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % 512


def _application_order(properties: Mapping[str, str]) -> list[str]:
    # Within a bucket the QDict list is newest-first (QLIST_INSERT_HEAD).
    indexed = list(enumerate(properties))
    return [key for _, key in sorted(indexed, key=lambda item: (qdict_bucket(item[1]), -item[0]))]


def _parse_value(key: str, kind: str, value: str) -> bool | OnOffAuto | str:
    if kind == "bool":
        if value in _BOOL_TRUE:
            return True
        if value in _BOOL_FALSE:
            return False
        raise VfioPropertyError(f"Parameter '{key}' expects 'on' or 'off'")
    if kind == "OnOffAuto":
        try:
            return OnOffAuto(value)
        except ValueError:
            raise VfioPropertyError(f"Parameter '{key}' does not accept value '{value}'") from None
    return value


def parse_properties(properties: Mapping[str, str], version: Version) -> VfioProperties:
    """The vfio-pci properties for ``version``, or :class:`VfioPropertyError` as QEMU reports it.

    Properties the model does not know (host, rombar, x-...) are assumed to exist and be valid: they do
    not take part in migration gating.
    """
    changes: dict[str, Any] = {}  # field -> value; the value's type follows PROPERTY_DEFS[key].kind
    for key in _application_order(properties):
        definition = PROPERTY_DEFS.get(key)
        if definition is None:
            continue
        if version < definition.since or (definition.until is not None and version >= definition.until):
            raise VfioPropertyError(f"Property 'vfio-pci.{key}' not found")
        value = _parse_value(key, definition.kind, properties[key])
        field_name = key.replace("-", "_")
        if field_name in VfioProperties.__dataclass_fields__:
            changes[field_name] = value
    return VfioProperties(**changes)
