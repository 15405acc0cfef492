"""The kernel FSM model against the uAPI's own path rules (include/uapi/linux/vfio.h, vfio_mig_get_next_state).

The table in uapi.py is copied from vfio_main.c; these tests check it against an independent statement of the
rules: the FSM arcs drivers implement for each flag set, shortest paths, no data fd opened on an interior
step, and -EINVAL exactly for unsupported states and the blocked STOP_COPY -> PRE_COPY(_P2P) requests.
"""

from __future__ import annotations

import itertools
import re
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.vfio_lab.build import lab_cache
from reference_impl.vfio.uapi import (
    ALL_FLAGS,
    FSM_TABLE,
    SAVING_GROUP,
    MigrationFlag,
    VfioDeviceState,
    VfioInvalidTransition,
    is_supported,
    next_state,
    opens_data_fd,
    set_returns_data_fd,
    supported_states,
    walk,
)

S = VfioDeviceState
F = MigrationFlag
ALL_FLAG_SETS = [MigrationFlag(v) for v in range(8)]  # including sets without the mandatory STOP_COPY
VALID_FLAG_SETS = [f for f in ALL_FLAG_SETS if f & F.STOP_COPY]


def driver_arcs(flags: MigrationFlag) -> set[tuple[VfioDeviceState, VfioDeviceState]]:
    """The single FSM arcs a driver implements, as the uAPI comment in vfio_main.c lists them."""
    arcs = {(S.STOP, S.RESUMING), (S.RESUMING, S.STOP), (S.STOP, S.STOP_COPY), (S.STOP_COPY, S.STOP)}
    p2p, precopy = bool(flags & F.P2P), bool(flags & F.PRE_COPY)
    if p2p:
        arcs |= {(S.RUNNING, S.RUNNING_P2P), (S.RUNNING_P2P, S.RUNNING)}
        arcs |= {(S.RUNNING_P2P, S.STOP), (S.STOP, S.RUNNING_P2P)}
    else:
        arcs |= {(S.RUNNING, S.STOP), (S.STOP, S.RUNNING)}
    if precopy:
        arcs |= {(S.RUNNING, S.PRE_COPY), (S.PRE_COPY, S.RUNNING)}
        if p2p:
            arcs |= {
                (S.PRE_COPY, S.PRE_COPY_P2P),
                (S.PRE_COPY_P2P, S.PRE_COPY),
                (S.PRE_COPY_P2P, S.RUNNING_P2P),
                (S.RUNNING_P2P, S.PRE_COPY_P2P),
                (S.PRE_COPY_P2P, S.STOP_COPY),
            }
        else:
            arcs.add((S.PRE_COPY, S.STOP_COPY))
    return arcs


def rule_distance(cur: VfioDeviceState, target: VfioDeviceState, flags: MigrationFlag) -> int | None:
    """Shortest number of arcs from cur to target where only the final arc may open a data fd
    (i.e. the path never enters the saving group, or RESUMING, as an interior step)."""
    arcs = driver_arcs(flags)
    # BFS over (state, may_continue): a state reached by a data-fd-opening arc can only end the path.
    seen = {(cur, True)}
    queue = deque([(cur, True, 0)])
    while queue:
        state, may_continue, dist = queue.popleft()
        if state == target and dist > 0:
            return dist
        if not may_continue:
            continue
        for frm, to in sorted(arcs):
            if frm != state:
                continue
            node = (to, not opens_data_fd(frm, to))
            if node not in seen:
                seen.add(node)
                queue.append((to, node[1], dist + 1))
    return None


def kernel_says_einval(cur: VfioDeviceState, target: VfioDeviceState, flags: MigrationFlag) -> bool:
    if cur == target:
        return False  # drivers loop while the state differs: a no-op
    if not is_supported(cur, flags) or not is_supported(target, flags):
        return True
    return cur is S.STOP_COPY and target in (S.PRE_COPY, S.PRE_COPY_P2P)


def test_state_numbers_and_qapi_names_match_the_uapi() -> None:
    assert [(s.name, int(s)) for s in S] == [
        ("ERROR", 0), ("STOP", 1), ("RUNNING", 2), ("STOP_COPY", 3),
        ("RESUMING", 4), ("RUNNING_P2P", 5), ("PRE_COPY", 6), ("PRE_COPY_P2P", 7),
    ]  # fmt: skip
    assert [s.qapi_name for s in S][1:] == [
        "stop", "running", "stop-copy", "resuming", "running-p2p", "pre-copy", "pre-copy-p2p",
    ]  # fmt: skip
    assert all(S.from_qapi_name(s.qapi_name) is s for s in S)
    with pytest.raises(ValueError, match="not a VFIO device state"):
        S.from_qapi_name("paused")


def test_supported_states_per_flag_set() -> None:
    base = {S.STOP, S.RUNNING, S.STOP_COPY, S.RESUMING}
    assert supported_states(F.STOP_COPY) == base
    assert supported_states(F.STOP_COPY | F.P2P) == base | {S.RUNNING_P2P}
    assert supported_states(F.STOP_COPY | F.PRE_COPY) == base | {S.PRE_COPY}
    assert supported_states(ALL_FLAGS) == base | {S.RUNNING_P2P, S.PRE_COPY, S.PRE_COPY_P2P}
    assert all(not supported_states(f) for f in ALL_FLAG_SETS if not f & F.STOP_COPY)
    assert all(S.ERROR not in supported_states(f) for f in ALL_FLAG_SETS)


@pytest.mark.parametrize("flags", ALL_FLAG_SETS, ids=lambda f: f"flags{int(f)}")
def test_every_request_follows_the_path_rules_or_is_einval(flags: MigrationFlag) -> None:
    arcs = driver_arcs(flags)
    checked = 0
    for cur, target in itertools.product(S, S):
        if kernel_says_einval(cur, target, flags):
            with pytest.raises(VfioInvalidTransition) as info:
                walk(cur, target, flags)
            assert info.value.errno == -22
            checked += 1
            continue
        path = walk(cur, target, flags)
        if cur == target:
            assert path == []
            continue
        assert path[-1] == target
        assert all(is_supported(s, flags) for s in path), path
        steps = list(zip([cur, *path], path, strict=False))
        assert all(step in arcs for step in steps), f"{cur.name}->{target.name}: {steps} uses a missing arc"
        # Saving-group (and RESUMING) states are never entered as interior steps: no interior data fd.
        assert not any(opens_data_fd(frm, to) for frm, to in steps[:-1]), steps
        assert len(path) == rule_distance(cur, target, flags), f"{cur.name}->{target.name}: {path} not shortest"
        checked += 1
    assert checked >= 8


def test_blocked_and_error_requests() -> None:
    for target in (S.PRE_COPY, S.PRE_COPY_P2P):
        with pytest.raises(VfioInvalidTransition, match="blocked"):
            next_state(S.STOP_COPY, target, ALL_FLAGS)
    for target in S:
        if target is not S.ERROR:
            with pytest.raises(VfioInvalidTransition, match="current state"):
                walk(S.ERROR, target, ALL_FLAGS)  # only VFIO_DEVICE_RESET leaves ERROR
    with pytest.raises(VfioInvalidTransition, match="target state"):
        walk(S.RUNNING, S.ERROR, ALL_FLAGS)
    with pytest.raises(VfioInvalidTransition, match="target state"):
        walk(S.RUNNING, S.RUNNING_P2P, F.STOP_COPY | F.PRE_COPY)  # no-p2p device


def test_documented_combination_paths() -> None:
    # Examples from the vfio_main.c comment (all optional features supported).
    assert walk(S.RUNNING, S.STOP_COPY, ALL_FLAGS) == [S.RUNNING_P2P, S.STOP, S.STOP_COPY]
    assert walk(S.PRE_COPY, S.STOP_COPY, ALL_FLAGS) == [S.PRE_COPY_P2P, S.STOP_COPY]
    assert walk(S.RESUMING, S.RUNNING, ALL_FLAGS) == [S.STOP, S.RUNNING_P2P, S.RUNNING]
    assert walk(S.STOP, S.PRE_COPY, ALL_FLAGS) == [S.RUNNING_P2P, S.RUNNING, S.PRE_COPY]
    # Without P2P, RUNNING_P2P / PRE_COPY_P2P steps are skipped.
    assert walk(S.RUNNING, S.STOP_COPY, F.STOP_COPY | F.PRE_COPY) == [S.STOP, S.STOP_COPY]
    assert walk(S.PRE_COPY, S.STOP_COPY, F.STOP_COPY | F.PRE_COPY) == [S.STOP_COPY]
    assert walk(S.RESUMING, S.RUNNING, F.STOP_COPY) == [S.STOP, S.RUNNING]


def test_data_fd_semantics() -> None:
    assert set_returns_data_fd(S.RUNNING, S.PRE_COPY, ALL_FLAGS)
    assert not set_returns_data_fd(S.PRE_COPY, S.PRE_COPY_P2P, ALL_FLAGS)  # same session
    assert not set_returns_data_fd(S.PRE_COPY_P2P, S.STOP_COPY, ALL_FLAGS)
    assert set_returns_data_fd(S.RUNNING_P2P, S.STOP_COPY, ALL_FLAGS)
    assert set_returns_data_fd(S.RUNNING, S.RESUMING, ALL_FLAGS)
    assert not set_returns_data_fd(S.STOP_COPY, S.STOP, ALL_FLAGS)
    assert not set_returns_data_fd(S.RUNNING, S.RUNNING, ALL_FLAGS)
    assert {S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY} == SAVING_GROUP


# No per-example deadline: the machine's CPUs are shared and a slow example is not a wrong one.
relaxed = settings(deadline=None)
flag_sets = st.sampled_from(VALID_FLAG_SETS)
states = st.sampled_from(list(S))


@relaxed
@given(flags=flag_sets, cur=states, target=states)
def test_walk_uses_only_supported_states(flags: MigrationFlag, cur: VfioDeviceState, target: VfioDeviceState) -> None:
    try:
        path = walk(cur, target, flags)
    except VfioInvalidTransition:
        assert kernel_says_einval(cur, target, flags)
        return
    assert all(is_supported(s, flags) for s in path)
    assert (path[-1] if path else cur) == target


@relaxed
@given(flags=flag_sets, cur=states, target=states)
def test_walking_twice_is_idempotent_at_the_target(
    flags: MigrationFlag, cur: VfioDeviceState, target: VfioDeviceState
) -> None:
    try:
        walk(cur, target, flags)
    except VfioInvalidTransition:
        return
    assert walk(target, target, flags) == []


@relaxed
@given(flags=flag_sets, targets=st.lists(states, max_size=12))
def test_any_request_sequence_ends_where_the_last_success_went(
    flags: MigrationFlag, targets: list[VfioDeviceState]
) -> None:
    state = S.RUNNING
    for target in targets:
        try:
            path = walk(state, target, flags)
        except VfioInvalidTransition:
            continue  # the kernel checks before stepping: the state is unchanged
        state = path[-1] if path else state
        assert state == target
        assert is_supported(state, flags)


def test_blocked_arcs_are_the_ones_that_hang_unfixed_kernels() -> None:
    # Linux before the 2026 fix to vfio_mig_get_next_state loops forever on the ERROR sentinel for
    # exactly these requests (Fixes: 4db52602a607); QEMU never makes them.
    hanging = set()
    for flags, cur, target in itertools.product(VALID_FLAG_SETS, S, S):
        try:
            walk(cur, target, flags)
        except VfioInvalidTransition as err:
            if err.hangs_unfixed_kernel:
                hanging.add((int(flags), cur, target))
    assert hanging == {
        (int(F.STOP_COPY | F.PRE_COPY), S.STOP_COPY, S.PRE_COPY),
        (int(ALL_FLAGS), S.STOP_COPY, S.PRE_COPY),
        (int(ALL_FLAGS), S.STOP_COPY, S.PRE_COPY_P2P),
    }


KERNEL_SOURCES = sorted(lab_cache().glob("kernel/*/src/linux-source-*/drivers/vfio/vfio_main.c"))


@pytest.mark.skipif(not KERNEL_SOURCES, reason="no unpacked kernel source under <cache>/lab (the VFIO lab builds it)")
def test_table_is_the_lab_kernels_table() -> None:
    for source in KERNEL_SOURCES:
        text = source.read_text()
        body = text[text.index("static const u8 vfio_from_fsm_table") :]
        body = body[: body.index("\t};")]
        table: dict[VfioDeviceState, dict[VfioDeviceState, VfioDeviceState]] = {}
        row = S.ERROR
        for line in body.splitlines():
            if m := re.match(r"\s*\[VFIO_DEVICE_STATE_(\w+)\] = \{", line):
                row = VfioDeviceState[m.group(1)]
                table[row] = {}
            elif m := re.match(r"\s*\[VFIO_DEVICE_STATE_(\w+)\] = VFIO_DEVICE_STATE_(\w+),", line):
                table[row][VfioDeviceState[m.group(1)]] = VfioDeviceState[m.group(2)]
        assert table == FSM_TABLE, source
        # ... and it has the fix that turns the blocked arcs into -EINVAL instead of an endless loop
        assert "while (*next_fsm != VFIO_DEVICE_STATE_ERROR &&" in text, source
