"""migrate-set-capabilities in the model (reference_impl.capabilities).

Expected texts and verdicts come from real QEMU runs recorded in docs/real-qemu-facts.md#caps-check
("real 10.0.2" / "real 7.2.22" below) or, for versions not run here, from QEMU's
migrate_caps_check (docs/real-qemu-facts.md caps-rules, "rule X").
"""

from __future__ import annotations

import pytest

from contract.versions import PROFILES, V7_2, V8_0, V8_1, V8_2, V9_0, V9_1, V10_0, V10_1, Version
from reference_impl.capabilities import (
    CapsCheckContext,
    apply_capability_request,
    capability_names,
    migrate_caps_check,
)

CTX = CapsCheckContext()
IGNORE_SHARED = "Postcopy is not compatible with ignore-shared"
PC_MULTIFD = "Postcopy is not yet compatible with multifd"
ZERO_COPY = "Zero copy only available for non-compressed non-TLS multifd migration"
SWITCHOVER = "Capability 'switchover-ack' requires capability 'return-path'"
DIRTY_KVM = "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"


def check(version: Version, *caps: str, ctx: CapsCheckContext = CTX, old: frozenset[str] = frozenset()) -> str | None:
    return migrate_caps_check(version, old, frozenset(caps), ctx)


def test_capability_lists_match_real_qemu() -> None:
    # real 10.0.2 and real 7.2.22 query-migrate-capabilities (docs/real-qemu-facts.md#caps-list).
    assert capability_names(V10_0) == (
        "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram", "x-colo",
        "release-ram", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
        "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
        "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit", "mapped-ram",
    )  # fmt: skip
    assert len(capability_names(V7_2)) == 21  # real 7.2.22: 21 names
    assert "compress" in capability_names(V7_2) and "block" in capability_names(V7_2)
    # qapi/migration.json MigrationCapability: 8.1 +switchover-ack/dirty-limit, 9.0 +mapped-ram, 9.1 drops
    # compress/block.
    assert "switchover-ack" not in capability_names(V8_0) and "switchover-ack" in capability_names(V8_1)
    assert "mapped-ram" in capability_names(V9_0) and "compress" not in capability_names(V9_1)


@pytest.mark.parametrize("version", [V7_2, V10_0])
def test_unknown_capability_is_answered_by_the_visitor(version: Version) -> None:
    # real 10.0.2 / 7.2.22: "Parameter 'capability' does not accept value 'foo'" (#unknown-cap).
    caps, error = apply_capability_request(version, frozenset(), {"events": True, "foo": True}, CTX,
                                           migration_running=False)
    assert error == "Parameter 'capability' does not accept value 'foo'"
    assert caps == frozenset()


def test_newer_capability_on_old_version_is_unknown() -> None:
    # real 7.2.22: mapped-ram -> "Parameter 'capability' does not accept value 'mapped-ram'".
    _, error = apply_capability_request(V7_2, frozenset(), {"mapped-ram": True}, CTX, migration_running=False)
    assert error == "Parameter 'capability' does not accept value 'mapped-ram'"


@pytest.mark.parametrize(
    ("version", "caps", "expected"),
    [
        # real 10.0.2 and 7.2.22 rows of docs/real-qemu-facts.md#caps-check
        (V10_0, ("postcopy-ram", "x-ignore-shared"), IGNORE_SHARED),
        (V7_2, ("postcopy-ram", "x-ignore-shared"), IGNORE_SHARED),
        (V10_0, ("postcopy-ram", "multifd"), PC_MULTIFD),
        (V7_2, ("postcopy-ram", "multifd"), None),
        (V10_1, ("postcopy-ram", "multifd"), None),  # caps-rules rule e: removed in 10.1
        (V10_0, ("postcopy-ram", "x-ignore-shared", "multifd"), IGNORE_SHARED),
        (V10_0, ("background-snapshot", "xbzrle", "postcopy-ram"),
         "Background-snapshot is not compatible with postcopy-ram"),
        (V10_0, ("background-snapshot", "multifd", "postcopy-ram", "x-ignore-shared"), IGNORE_SHARED),
        (V10_0, ("background-snapshot", "postcopy-preempt"), "Postcopy preempt requires postcopy-ram"),
        (V10_0, ("background-snapshot", "switchover-ack"), SWITCHOVER),
        (V10_0, ("background-snapshot", "dirty-limit"), DIRTY_KVM),
        (V10_0, ("background-snapshot", "events", "x-ignore-shared", "zero-blocks", "mapped-ram"), None),
        (V7_2, ("background-snapshot", "compress"), "Background-snapshot is not compatible with compress"),
        (V7_2, ("background-snapshot", "block"), None),
        (V10_0, ("switchover-ack",), SWITCHOVER),
        (V10_0, ("switchover-ack", "return-path"), None),
        (V10_0, ("dirty-limit",), DIRTY_KVM),
        (V10_0, ("dirty-limit", "auto-converge"),
         "dirty-limit conflicts with auto-converge either of then available currently"),
        (V10_0, ("dirty-limit", "switchover-ack"), SWITCHOVER),
        (V10_0, ("postcopy-preempt",), "Postcopy preempt requires postcopy-ram"),
        (V10_0, ("postcopy-preempt", "postcopy-ram"), None),
        (V7_2, ("postcopy-preempt", "postcopy-ram", "compress"), "Postcopy preempt not compatible with compress"),
        (V10_0, ("postcopy-preempt", "multifd", "xbzrle"), "Postcopy preempt requires postcopy-ram"),
        (V10_0, ("multifd", "xbzrle"), "Multifd is not compatible with xbzrle"),
        (V8_2, ("multifd", "xbzrle"), "Multifd is not compatible with xbzrle"),  # caps-rules rule s: 8.2+
        (V8_1, ("multifd", "xbzrle"), None),
        (V7_2, ("multifd", "xbzrle"), None),
        (V7_2, ("multifd", "compress"), "Multifd is not compatible with compress"),
        (V7_2, ("compress", "xbzrle"), None),
        (V8_2, ("compress", "xbzrle"), "Compression is not compatible with xbzrle"),  # caps-rules rule t
        (V10_0, ("zero-copy-send",), ZERO_COPY),
        (V10_0, ("zero-copy-send", "multifd"), None),
        (V10_0, ("zero-copy-send", "multifd", "xbzrle"), ZERO_COPY),
        (V7_2, ("zero-copy-send", "multifd", "compress"), ZERO_COPY),
        (V10_0, ("zero-copy-send", "postcopy-preempt"), ZERO_COPY),
        (V10_0, ("postcopy-ram", "multifd", "postcopy-preempt"), PC_MULTIFD),
        (V7_2, ("postcopy-ram", "multifd", "postcopy-preempt"), None),
        (V10_0, ("x-colo",), None),
        (V7_2, ("block",), None),
        (V10_0, ("zero-blocks",), None),
        (V10_0, ("mapped-ram", "xbzrle"), "Mapped-ram migration is incompatible with xbzrle"),
        (V10_0, ("mapped-ram", "postcopy-ram"), "Mapped-ram migration is incompatible with postcopy"),
        (V10_0, ("mapped-ram", "postcopy-ram", "x-ignore-shared"), IGNORE_SHARED),
        (V10_0, ("mapped-ram", "multifd"), None),
    ],
)
def test_caps_check_rules_and_order(version: Version, caps: tuple[str, ...], expected: str | None) -> None:
    assert check(version, *caps) == expected


@pytest.mark.parametrize(
    "cap",
    ["postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "return-path", "multifd",
     "pause-before-switchover", "auto-converge", "release-ram", "rdma-pin-all", "xbzrle", "x-colo",
     "validate-uuid", "zero-copy-send"],
)
def test_background_snapshot_conflicts(cap: str) -> None:
    # real 10.0.2: "Background-snapshot is not compatible with <cap>" for each (#caps-check).
    assert check(V10_0, "background-snapshot", cap) == f"Background-snapshot is not compatible with {cap}"


def test_host_dependent_rules() -> None:
    # caps-rules rule f: UFFD-WP missing wins over rule h.
    no_wp = CapsCheckContext(uffd_wp=False)
    assert check(V10_0, "background-snapshot", "postcopy-ram", ctx=no_wp) == (
        "Background-snapshot is not supported by host kernel"
    )
    # rule c: destination only, only when newly enabled; 7.2/8.0 without detail.
    dst = CapsCheckContext(inmigrate=True, userfaultfd=False)
    assert check(V7_2, "postcopy-ram", ctx=dst) == "Postcopy is not supported"
    assert check(V10_0, "postcopy-ram", ctx=dst).startswith("Postcopy is not supported: ")  # type: ignore[union-attr]
    assert check(V10_0, "postcopy-ram", ctx=dst, old=frozenset({"postcopy-ram"})) is None
    assert check(V10_0, "postcopy-ram", ctx=CapsCheckContext(userfaultfd=False)) is None  # the source
    # rule r: KVM with a dirty ring accepts dirty-limit.
    assert check(V10_0, "dirty-limit", ctx=CapsCheckContext(kvm_dirty_ring=True)) is None


def test_incoming_started_rules() -> None:
    # real 10.0.2 destination after migrate-incoming tcp: multifd / postcopy-preempt refused; 7.2.22 accepts.
    started = CapsCheckContext(inmigrate=True, incoming_started=True)
    assert check(V10_0, "multifd", ctx=started) == "Multifd must be set before incoming starts"
    assert check(V10_0, "postcopy-ram", "postcopy-preempt", ctx=started) == (
        "Postcopy preempt must be set before incoming starts"
    )
    assert check(V10_0, "return-path", ctx=started) is None
    assert check(V7_2, "multifd", ctx=started) is None
    # caps-rules rules m/o: 10.1+ only when newly enabled.
    assert check(V10_1, "multifd", ctx=started, old=frozenset({"multifd"})) is None
    assert check(V10_0, "multifd", ctx=started, old=frozenset({"multifd"})) == (
        "Multifd must be set before incoming starts"
    )


def test_zero_copy_reads_current_parameters() -> None:
    # real 10.0.2 / 7.2.22: multifd-compression zstd set first, then zero-copy-send+multifd is refused.
    assert check(V10_0, "zero-copy-send", "multifd", ctx=CapsCheckContext(multifd_compression=True)) == ZERO_COPY


def test_refused_request_changes_nothing_and_order_matters() -> None:
    # real 10.0.2 / 7.2.22: x-ignore-shared, then postcopy-ram refused; only x-ignore-shared stays on.
    for version in (V7_2, V10_0):
        caps, error = apply_capability_request(version, frozenset(), {"x-ignore-shared": True}, CTX,
                                               migration_running=False)
        assert error is None
        after, error = apply_capability_request(version, caps, {"postcopy-ram": True}, CTX, migration_running=False)
        assert error == IGNORE_SHARED
        assert after == frozenset({"x-ignore-shared"})


def test_in_progress_refusal() -> None:
    # real 10.0.2 / 7.2.22 during an active migration: "There's a migration process in progress".
    caps, error = apply_capability_request(V10_0, frozenset(), {"xbzrle": True}, CTX, migration_running=True)
    assert error == "There's a migration process in progress"
    assert caps == frozenset()


def test_every_profile_accepts_turning_everything_off() -> None:
    # migrate_caps_check: no rule fires on an empty set.
    for version in PROFILES:
        request = dict.fromkeys(capability_names(version), False)
        _, error = apply_capability_request(version, frozenset(), request, CTX, migration_running=False)
        assert error is None
