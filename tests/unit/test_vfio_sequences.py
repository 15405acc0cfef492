"""Device-state sequences QEMU drives (vfio_save_setup, vfio_vmstate_change; lab (docs/vfio-lab.md) trace and
VFIO_MIGRATION events on 10.0.2)."""

from __future__ import annotations

import itertools

import pytest

from contract.versions import PROFILES, V8_0, V8_1, V8_2, V9_0, V10_0, Version
from reference_impl.vfio.personality import PERSONALITIES
from reference_impl.vfio.sequences import (
    SOURCE_OUTCOMES,
    VfioSequenceError,
    VfioStateDriver,
    destination_sequence,
    snapshot_sequence,
    source_sequence,
)
from reference_impl.vfio.uapi import ALL_FLAGS, MigrationFlag, VfioDeviceState, walk

S = VfioDeviceState
F = MigrationFlag
NO_P2P = F.STOP_COPY | F.PRE_COPY
NO_PRECOPY = F.STOP_COPY | F.P2P
FLAG_SETS = [f for f in (p.migration_flags for p in PERSONALITIES.values()) if f is not None] + [F.STOP_COPY]


def test_lab_a2_running_source_events() -> None:
    # lab, default precopy (10.0.2, -S then cont, migration-events=on): running-p2p, running, pre-copy, pre-copy-p2p,
    # stop-copy, stop
    assert source_sequence(ALL_FLAGS, V10_0, vm_running=True) == [
        "running-p2p", "running", "pre-copy", "pre-copy-p2p", "stop-copy", "stop",
    ]  # fmt: skip


def test_lab_a2_kernel_steps() -> None:
    # mtty dmesg for the migration: 2 -> 6, 6 -> 7, 7 -> 3, 3 -> 1
    drv = VfioStateDriver(ALL_FLAGS, V10_0)
    drv.vm_start()
    start = len(drv.kernel_path)
    drv.save_setup()
    drv.vm_stop("finish-migrate")
    drv.complete_precopy()
    drv.save_cleanup()
    assert drv.kernel_path[start:] == [S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY, S.STOP]


def test_lab_a2_destination_stays_resuming_when_not_started() -> None:
    # lab, default precopy: destination events: resuming (the -S destination ends paused)
    assert destination_sequence(ALL_FLAGS, V10_0) == ["resuming"]


def test_destination_started_runs_the_vm_start_callbacks() -> None:
    # vfio_vmstate_change: at VM start prepare -> RUNNING_P2P (kernel path RESUMING -> STOP -> RUNNING_P2P), then
    # RUNNING
    assert destination_sequence(ALL_FLAGS, V10_0, start_vm=True) == ["resuming", "running-p2p", "running"]
    assert destination_sequence(NO_P2P, V10_0, start_vm=True) == ["resuming", "running"]
    drv = VfioStateDriver(ALL_FLAGS, V10_0)
    drv.load_setup()
    assert drv.kernel_path == [S.RUNNING_P2P, S.STOP, S.RESUMING]


def test_paused_source_never_runs_vm_state_callbacks() -> None:
    # A -S source that is never continued (lab a1): no running-p2p/running; the stop for switchover only
    # relabels the runstate, so completion moves PRE_COPY straight to STOP_COPY.
    assert source_sequence(ALL_FLAGS, V10_0, vm_running=False) == ["pre-copy", "stop-copy", "stop"]


def test_source_stopped_before_migrate() -> None:
    # stop: prepare RUNNING_P2P, then STOP (not precopy); save_setup leaves STOP; completion STOP_COPY
    assert source_sequence(ALL_FLAGS, V10_0, vm_running=False, stopped_before_migrate=True) == [
        "running-p2p", "running", "running-p2p", "stop", "stop-copy", "stop",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (NO_P2P, ["pre-copy", "stop-copy", "stop"]),  # no prepare callback, RUNNING -> RUNNING is a no-op
        (NO_PRECOPY, ["running-p2p", "running", "running-p2p", "stop", "stop-copy", "stop"]),
        (F.STOP_COPY, ["stop", "stop-copy", "stop"]),
    ],
)
def test_running_source_per_flag_set(flags: MigrationFlag, expected: list[str]) -> None:
    assert source_sequence(flags, V10_0) == expected


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        # 8.0: no PRE_COPY use, no P2P prepare, VM stop always STOP, completion goes back to STOP itself
        (V8_0, ["stop", "stop-copy", "stop"]),
        # 8.1: PRE_COPY, no prepare callback
        (V8_1, ["pre-copy", "stop-copy", "stop"]),
        # 8.2: P2P prepare callbacks; STOP in save_cleanup
        (V8_2, ["running-p2p", "running", "pre-copy", "pre-copy-p2p", "stop-copy", "stop"]),
        (V9_0, ["running-p2p", "running", "pre-copy", "pre-copy-p2p", "stop-copy", "stop"]),
    ],
)
def test_running_source_per_version(version: Version, expected: list[str]) -> None:
    assert source_sequence(ALL_FLAGS, version) == expected


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("setup-failed", ["running-p2p", "running"]),  # lab a0/a4: ram_save_setup fails first
        ("cancelled", ["running-p2p", "running", "pre-copy", "running"]),
        (
            "failed-after-switchover",
            ["running-p2p", "running", "pre-copy", "pre-copy-p2p", "stop-copy", "running-p2p", "running"],
        ),
    ],
)
def test_failure_and_cancel_go_back_to_running(outcome: str, expected: list[str]) -> None:
    assert source_sequence(ALL_FLAGS, V10_0, outcome=outcome) == expected


def test_failed_after_switchover_on_a_paused_source() -> None:
    # no VM restart: save_cleanup STOP_COPY -> STOP, then the failure notifier RUNNING
    assert source_sequence(ALL_FLAGS, V10_0, vm_running=False, outcome="failed-after-switchover") == [
        "pre-copy", "stop-copy", "stop", "running",
    ]  # fmt: skip


def test_unchanged_state_is_a_no_op_from_9_1() -> None:
    drv = VfioStateDriver(ALL_FLAGS, V10_0)
    drv.set_state(S.RUNNING)
    assert drv.kernel_path == [] and drv.changes == []


def test_save_setup_in_an_unexpected_state_is_an_error_from_9_1() -> None:
    drv = VfioStateDriver(ALL_FLAGS, V10_0, state=S.RUNNING_P2P)
    with pytest.raises(VfioSequenceError, match="Invalid device state 5"):
        drv.save_setup()


def test_unknown_outcome_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="allowed: completed, setup-failed"):
        source_sequence(ALL_FLAGS, V10_0, outcome="crashed")


def test_snapshot_of_a_running_vm_stops_to_stop_not_stop_copy() -> None:
    # runstate save-vm is neither finish-migrate nor paused, and the device is not in a precopy state yet
    assert snapshot_sequence(ALL_FLAGS, V10_0) == [
        "running-p2p", "running", "running-p2p", "stop", "stop-copy", "stop", "running-p2p", "running",
    ]  # fmt: skip
    assert snapshot_sequence(ALL_FLAGS, V10_0, vm_running=False) == ["pre-copy", "stop-copy", "stop"]


@pytest.mark.parametrize("version", PROFILES, ids=lambda v: v.short)
def test_every_qemu_target_is_reachable_with_the_kernel_walk(version: Version) -> None:
    cases = 0
    for flags, outcome, running, stopped in itertools.product(
        FLAG_SETS, SOURCE_OUTCOMES, (True, False), (True, False)
    ):
        sequence = source_sequence(flags, version, vm_running=running, stopped_before_migrate=stopped, outcome=outcome)
        states = [S.RUNNING, *(S.from_qapi_name(name) for name in sequence)]
        for cur, target in itertools.pairwise(states):
            assert walk(cur, target, flags)[-1] == target  # raises VfioInvalidTransition if unreachable
        cases += 1
    for flags, start in itertools.product(FLAG_SETS, (True, False)):
        states = [S.RUNNING, *(S.from_qapi_name(n) for n in destination_sequence(flags, version, start_vm=start))]
        for cur, target in itertools.pairwise(states):
            assert walk(cur, target, flags)[-1] == target
        cases += 1
    for flags, running in itertools.product(FLAG_SETS, (True, False)):
        states = [S.RUNNING, *(S.from_qapi_name(n) for n in snapshot_sequence(flags, version, vm_running=running))]
        for cur, target in itertools.pairwise(states):
            assert walk(cur, target, flags)[-1] == target
        cases += 1
    assert cases == len(FLAG_SETS) * (len(SOURCE_OUTCOMES) * 4 + 2 + 2)
