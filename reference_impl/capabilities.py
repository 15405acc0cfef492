"""Migration capabilities per QEMU version and ``migrate-set-capabilities`` (``qmp_migrate_set_capabilities``).

The check runs over the whole resulting set (current caps with the request applied), top to bottom in QEMU's
order, and the first failing rule wins; a refused request changes nothing (qmp_migrate_set_capabilities,
migrate_caps_check; docs/real-qemu-facts.md caps-rules; measured on 10.0.2 and 7.2.22,
docs/real-qemu-facts.md#caps-check). Each rule names the QEMU function it mirrors and the versions it exists in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from contract.versions import PROFILES, V8_1, V9_0, V9_1, Version

# Profiles as integers (major * 100 + minor): the hot path compares these instead of Version objects.
N8_0, N8_1, N8_2, N9_0, N9_1, N9_2, N10_0, N10_1, N10_2 = 800, 801, 802, 900, 901, 902, 1000, 1001, 1002


def vnum(version: Version) -> int:
    return version.major * 100 + version.minor


# MigrationCapability (qapi/migration.json), in enum order. 7.2/8.0: 21 (measured on 7.2.22,
# docs/real-qemu-facts.md#caps-list).
_CAPS_7_2 = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram", "x-colo",
    "release-ram", "block", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
    "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt",
)  # fmt: skip


def _capability_names(version: Version) -> tuple[str, ...]:
    """The enum for one profile: 8.1 adds switchover-ack and dirty-limit, 9.0 mapped-ram, 9.1 drops compress
    and block (10.0.2's 22 names measured, docs/real-qemu-facts.md#caps-list)."""
    names = list(_CAPS_7_2)
    if version >= V8_1:
        names += ["switchover-ack", "dirty-limit"]
    if version >= V9_0:
        names.append("mapped-ram")
    if version >= V9_1:
        names.remove("compress")
        names.remove("block")
    return tuple(names)


CAPABILITIES: dict[Version, tuple[str, ...]] = {v: _capability_names(v) for v in PROFILES}
_CAPABILITY_SETS: dict[Version, frozenset[str]] = {v: frozenset(names) for v, names in CAPABILITIES.items()}

# check_caps_background_snapshot (migration/options.c): the caps refused together with background-snapshot,
# in list order (the first one set is named). compress only while it exists (<= 9.0).
_BG_SNAPSHOT_INCOMPATIBLE = (
    "postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "return-path", "multifd",
    "pause-before-switchover", "auto-converge", "release-ram", "rdma-pin-all", "compress", "xbzrle", "x-colo",
    "validate-uuid", "zero-copy-send",
)  # fmt: skip

IN_PROGRESS = "There's a migration process in progress"


def capability_names(version: Version) -> tuple[str, ...]:
    """query-migrate-capabilities names of a profile, in QEMU's order."""
    return CAPABILITIES[version]


def unknown_capability_error(name: str) -> str:
    """The QAPI input visitor's answer to a name outside the enum (visit_type_MigrationCapability).

    Measured on 10.0.2 and 7.2.22 alike: no list index in the text (docs/real-qemu-facts.md#unknown-cap).
    """
    return f"Parameter 'capability' does not accept value '{name}'"


class CapsCheckContext(NamedTuple):
    """What ``migrate_caps_check`` looks at besides the two capability sets."""

    inmigrate: bool = False  # runstate inmigrate (the destination)
    incoming_started: bool = False  # migrate_incoming_started(): a socket listener exists (tcp/unix)
    incoming_single_channel: bool = False  # 7.2: migrate-incoming used exec:/fd: (multi channels disallowed)
    userfaultfd: bool = True
    uffd_wp: bool = True
    kvm_dirty_ring: bool = False  # kvm_enabled() && kvm_dirty_ring_enabled()
    multifd_compression: bool = False  # migrate_multifd_compression() != none (current parameters)
    tls: bool = False  # migrate_tls(): tls-creds set


def migrate_caps_check(version: Version, old: frozenset[str], new: frozenset[str], ctx: CapsCheckContext) -> str | None:
    """``migrate_caps_check`` (migration/options.c 8.1+; migration/migration.c 7.2/8.0): the first error, or None.

    Build-dependent rules that never fire on Debian's builds are left out and named here: x-colo without
    CONFIG_REPLICATION and block without CONFIG_LIVE_BLOCK_MIGRATION (both accepted by 10.0.2 and 7.2.22,
    docs/real-qemu-facts.md#caps-check), zero-copy on non-Linux, RDMA (no rdma: transport in scenarios).
    """
    v = vnum(version)
    if "postcopy-ram" in new:
        # Rule c: only the destination checks the host, and only when the cap is newly enabled.
        if "postcopy-ram" not in old and ctx.inmigrate and not ctx.userfaultfd:
            if v < N8_1:
                return "Postcopy is not supported"
            # 8.1+ prepends the reason from postcopy_ram_supported_by_host(); uffd_open failing with EPERM is
            # the usual cause (vm.unprivileged_userfaultfd=0 without /dev/userfaultfd access).
            return "Postcopy is not supported: Userfaultfd not available: Operation not permitted"
        # Rule d (all versions; measured 10.0.2 and 7.2.22).
        if "x-ignore-shared" in new:
            return "Postcopy is not compatible with ignore-shared"
        # Rule e: 8.1-10.0, removed in 10.1 (7.2.22 accepts the pair, 10.0.2 refuses it: measured).
        if "multifd" in new and N8_1 <= v < N10_1:
            return "Postcopy is not yet compatible with multifd"
    if "background-snapshot" in new:
        # Rules f/h (migrate_query_write_tracking, check_caps_background_snapshot); rule g (guest memory that
        # cannot be write-protected) never applies to the anonymous RAM the scenarios use.
        if not ctx.uffd_wp:
            return "Background-snapshot is not supported by host kernel"
        for cap in _BG_SNAPSHOT_INCOMPATIBLE:
            if cap in new:
                return f"Background-snapshot is not compatible with {cap}"
    # Rule i: zero-copy-send (CONFIG_LINUX); reads the *current* multifd-compression/TLS parameters.
    if "zero-copy-send" in new and (
        "multifd" not in new or "compress" in new or "xbzrle" in new or ctx.multifd_compression or ctx.tls
    ):
        return "Zero copy only available for non-compressed non-TLS multifd migration"
    # Rule j: 7.2 only, incoming side.
    if v < N8_0 and ctx.inmigrate and ctx.incoming_single_channel and "multifd" in new:
        return "multifd is not supported by current protocol"
    if "postcopy-preempt" in new:
        # Rule k (all), l (compress exists: <= 9.0), m (8.1+; 10.1+ only when newly enabled).
        if "postcopy-ram" not in new:
            return "Postcopy preempt requires postcopy-ram"
        if "compress" in new:
            return "Postcopy preempt not compatible with compress"
        if v >= N8_1 and ctx.incoming_started and (v < N10_1 or "postcopy-preempt" not in old):
            return "Postcopy preempt must be set before incoming starts"
    if "multifd" in new:
        # Rule n (compress exists: <= 9.0), o (8.1+; 10.1+ only when newly enabled).
        if "compress" in new:
            return "Multifd is not compatible with compress"
        if v >= N8_1 and ctx.incoming_started and (v < N10_1 or "multifd" not in old):
            return "Multifd must be set before incoming starts"
    if v >= N8_1:
        # Rules p, q, r (8.1+); q before r (measured 10.0.2: dirty-limit+auto-converge gives q under TCG).
        if "switchover-ack" in new and "return-path" not in new:
            return "Capability 'switchover-ack' requires capability 'return-path'"
        if "dirty-limit" in new:
            if "auto-converge" in new:
                return "dirty-limit conflicts with auto-converge either of then available currently"
            if not ctx.kvm_dirty_ring:
                return "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"
    if v >= N8_2:
        # Rules s (8.2+; 7.2.22 accepts multifd+xbzrle: measured) and t (compress exists: 8.2-9.0).
        if "multifd" in new and "xbzrle" in new:
            return "Multifd is not compatible with xbzrle"
        if "compress" in new and "xbzrle" in new:
            return "Compression is not compatible with xbzrle"
    if "mapped-ram" in new:
        # Rule u (9.0+; the enum value exists only there).
        if "xbzrle" in new:
            return "Mapped-ram migration is incompatible with xbzrle"
        if "compress" in new:
            return "Mapped-ram migration is incompatible with compression"
        if "postcopy-ram" in new:
            return "Mapped-ram migration is incompatible with postcopy"
    return None


def apply_capability_request(
    version: Version,
    current: frozenset[str],
    request: Mapping[str, bool],
    ctx: CapsCheckContext,
    *,
    migration_running: bool,
) -> tuple[frozenset[str], str | None]:
    """``qmp_migrate_set_capabilities``: (the capability set afterwards, the error or None).

    Order: the QAPI visitor rejects unknown names first (the request is parsed before the handler runs),
    then "There's a migration process in progress" (migration_is_running on this VM's outgoing side), then
    migrate_caps_check on the whole new set. On any error the set is unchanged.
    """
    known = _CAPABILITY_SETS[version]
    if not known.issuperset(request):
        for name in request:
            if name not in known:
                return current, unknown_capability_error(name)
    if migration_running:
        return current, IN_PROGRESS
    enabled = {name for name, state in request.items() if state}
    disabled = {name for name, state in request.items() if not state}
    new = (current - disabled) | enabled
    error = migrate_caps_check(version, current, frozenset(new), ctx)
    if error is not None:
        return current, error
    return frozenset(new), None
