"""Migration blockers: ``migrate_add_blocker`` and friends (migration/migration.c).

One instance per modelled VM. The list is kept newest-first because ``migration_is_blocked`` reports the
head of the list, i.e. the most recently added blocker (migration_is_blocked).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MigrationBlockers:
    only_migratable: bool = False
    # Newest first; each entry is the reason text exactly as QEMU stores it.
    reasons: list[str] = field(default_factory=list)
    # vmsd idstrs of registered unmigratable devices, in registration order.
    unmigratable: list[str] = field(default_factory=list)

    def add(self, reason: str, *, internal: bool = False, busy: bool = False) -> str | None:
        """``migrate_add_blocker`` (``internal``: ``migrate_add_blocker_internal``).

        Returns the error QEMU sets in errp, or None when the blocker was added. Failure order (all
        versions): --only-migratable first (not for internal blockers), then busy.
        """
        if self.only_migratable and not internal:
            return f"disallowing migration blocker (--only-migratable) for: {reason}"
        if busy:
            return f"disallowing migration blocker (migration/snapshot in progress) for: {reason}"
        self.reasons.insert(0, reason)
        return None

    def remove(self, reason: str) -> None:
        """``migrate_del_blocker``."""
        if reason in self.reasons:
            self.reasons.remove(reason)

    def is_blocked(self, mode: str = "normal") -> str | None:
        """``migration_is_blocked``: the error ``migrate``/``snapshot-save`` report, or None.

        Unmigratable vmsds are checked first, then the newest blocker of the migration ``mode``
        (``migration_blockers[migrate_mode()]``, 10.0.2): a CPR mode does not see the blockers the block
        formats add with migrate_add_blocker_normal (block/vvfat.c, vmdk.c, vdi.c, vhdx.c, vpc.c, qcow.c,
        parallels.c in 10.0.2; 7.2 has no modes).
        """
        if self.unmigratable:
            return f"State blocked by non-migratable device '{self.unmigratable[0]}'"
        reasons = [r for r in self.reasons if mode == "normal" or not normal_mode_only(r)]
        if reasons:
            return reasons[0]
        return None

    def blocked_reasons(self) -> list[str]:
        """query-migrate ``blocked-reasons``: explicit blockers, then one per unmigratable vmsd."""
        return list(self.reasons) + [f"non-migratable device: {idstr}" for idstr in self.unmigratable]


def normal_mode_only(reason: str) -> bool:
    """A block format's blocker (catalog.format_blocker: "The <fmt> format used by node ..."), which 10.0.2 adds
    with migrate_add_blocker_normal."""
    return reason.startswith("The ") and " format used by node " in reason
