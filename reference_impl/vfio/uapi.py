"""The kernel's VFIO migration uAPI v2: device states, migration flags and the state machine.

QEMU never walks combination arcs itself: it asks for a final ``device_state`` and the kernel steps through
``vfio_from_fsm_table`` (Linux drivers/vfio/vfio_main.c ``vfio_mig_get_next_state``), skipping states the
device's migration flags do not provide. Modelling the kernel exactly is what lets the model say which
intermediate states a real device passes through, and which requests fail with -EINVAL (include/uapi/linux/vfio.h,
vfio_mig_get_next_state in drivers/vfio/vfio_main.c).
"""

from __future__ import annotations

import errno
from enum import IntEnum, IntFlag


class VfioDeviceState(IntEnum):
    """``enum vfio_device_mig_state`` (include/uapi/linux/vfio.h); the numbers are the uAPI's."""

    ERROR = 0
    STOP = 1
    RUNNING = 2
    STOP_COPY = 3
    RESUMING = 4
    RUNNING_P2P = 5
    PRE_COPY = 6
    PRE_COPY_P2P = 7

    @property
    def qapi_name(self) -> str:
        """The ``device-state`` value of QEMU's ``VFIO_MIGRATION`` event (QAPI ``QapiVfioMigrationState``)."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_qapi_name(cls, name: str) -> VfioDeviceState:
        """Inverse of :attr:`qapi_name`, for comparing with recorded events."""
        try:
            return cls[name.upper().replace("-", "_")]
        except KeyError:
            allowed = ", ".join(s.qapi_name for s in cls)
            raise ValueError(f"not a VFIO device state: {name!r} (allowed: {allowed})") from None


class MigrationFlag(IntFlag):
    """``VFIO_MIGRATION_*`` flags reported by ``VFIO_DEVICE_FEATURE_MIGRATION`` GET."""

    STOP_COPY = 1 << 0
    P2P = 1 << 1
    PRE_COPY = 1 << 2


S = VfioDeviceState
ALL_FLAGS = MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY

# state_flags_table: the flags a state needs. ERROR needs ~0U, i.e. it is never "supported", which is how the
# kernel refuses ERROR as a target and as a starting state.
_ERROR_FLAGS = 0xFFFFFFFF
STATE_FLAGS: dict[VfioDeviceState, int] = {
    S.STOP: MigrationFlag.STOP_COPY,
    S.RUNNING: MigrationFlag.STOP_COPY,
    S.PRE_COPY: MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY,
    S.PRE_COPY_P2P: MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY,
    S.STOP_COPY: MigrationFlag.STOP_COPY,
    S.RESUMING: MigrationFlag.STOP_COPY,
    S.RUNNING_P2P: MigrationFlag.STOP_COPY | MigrationFlag.P2P,
    S.ERROR: _ERROR_FLAGS,
}

# vfio_from_fsm_table[cur][new] = next step, copied entry by entry from vfio_main.c (Linux 6.12; the tests
# compare it with the lab's 6.12.117 source when that is unpacked).
FSM_TABLE: dict[VfioDeviceState, dict[VfioDeviceState, VfioDeviceState]] = {
    S.STOP: {
        S.STOP: S.STOP,
        S.RUNNING: S.RUNNING_P2P,
        S.PRE_COPY: S.RUNNING_P2P,
        S.PRE_COPY_P2P: S.RUNNING_P2P,
        S.STOP_COPY: S.STOP_COPY,
        S.RESUMING: S.RESUMING,
        S.RUNNING_P2P: S.RUNNING_P2P,
        S.ERROR: S.ERROR,
    },
    S.RUNNING: {
        S.STOP: S.RUNNING_P2P,
        S.RUNNING: S.RUNNING,
        S.PRE_COPY: S.PRE_COPY,
        S.PRE_COPY_P2P: S.RUNNING_P2P,
        S.STOP_COPY: S.RUNNING_P2P,
        S.RESUMING: S.RUNNING_P2P,
        S.RUNNING_P2P: S.RUNNING_P2P,
        S.ERROR: S.ERROR,
    },
    S.PRE_COPY: {
        S.STOP: S.RUNNING,
        S.RUNNING: S.RUNNING,
        S.PRE_COPY: S.PRE_COPY,
        S.PRE_COPY_P2P: S.PRE_COPY_P2P,
        S.STOP_COPY: S.PRE_COPY_P2P,
        S.RESUMING: S.RUNNING,
        S.RUNNING_P2P: S.RUNNING,
        S.ERROR: S.ERROR,
    },
    S.PRE_COPY_P2P: {
        S.STOP: S.RUNNING_P2P,
        S.RUNNING: S.RUNNING_P2P,
        S.PRE_COPY: S.PRE_COPY,
        S.PRE_COPY_P2P: S.PRE_COPY_P2P,
        S.STOP_COPY: S.STOP_COPY,
        S.RESUMING: S.RUNNING_P2P,
        S.RUNNING_P2P: S.RUNNING_P2P,
        S.ERROR: S.ERROR,
    },
    S.STOP_COPY: {
        S.STOP: S.STOP,
        S.RUNNING: S.STOP,
        S.PRE_COPY: S.ERROR,
        S.PRE_COPY_P2P: S.ERROR,
        S.STOP_COPY: S.STOP_COPY,
        S.RESUMING: S.STOP,
        S.RUNNING_P2P: S.STOP,
        S.ERROR: S.ERROR,
    },
    S.RESUMING: {
        S.STOP: S.STOP,
        S.RUNNING: S.STOP,
        S.PRE_COPY: S.STOP,
        S.PRE_COPY_P2P: S.STOP,
        S.STOP_COPY: S.STOP,
        S.RESUMING: S.RESUMING,
        S.RUNNING_P2P: S.STOP,
        S.ERROR: S.ERROR,
    },
    S.RUNNING_P2P: {
        S.STOP: S.STOP,
        S.RUNNING: S.RUNNING,
        S.PRE_COPY: S.RUNNING,
        S.PRE_COPY_P2P: S.PRE_COPY_P2P,
        S.STOP_COPY: S.STOP,
        S.RESUMING: S.STOP,
        S.RUNNING_P2P: S.RUNNING_P2P,
        S.ERROR: S.ERROR,
    },
    S.ERROR: {target: S.ERROR for target in S},
}

# States in which the device produces migration data; moving inside the group keeps the data fd.
SAVING_GROUP: frozenset[VfioDeviceState] = frozenset({S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY})


class VfioInvalidTransition(ValueError):
    """The ``VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`` SET ioctl would fail with -EINVAL."""

    errno = -errno.EINVAL

    def __init__(
        self,
        cur: VfioDeviceState,
        target: VfioDeviceState,
        flags: int,
        why: str,
        *,
        hangs_unfixed_kernel: bool = False,
    ) -> None:
        self.cur = cur
        self.target = target
        self.flags = MigrationFlag(flags & ALL_FLAGS)
        self.why = why
        # True for STOP_COPY -> PRE_COPY(_P2P) on a PRE_COPY device: -EINVAL only on fixed kernels; older
        # ones (4db52602a607 up to the fix) never return from vfio_mig_get_next_state.
        self.hangs_unfixed_kernel = hangs_unfixed_kernel
        super().__init__(f"{cur.name} -> {target.name} with flags {self.flags!r}: -EINVAL ({why})")


def is_supported(state: VfioDeviceState, flags: int) -> bool:
    """Whether a device with ``flags`` has ``state`` (``state_flags_table`` test); never true for ERROR."""
    needed = STATE_FLAGS[state]
    return (needed & flags) == needed


def supported_states(flags: int) -> frozenset[VfioDeviceState]:
    """The states a device with these migration flags offers (STOP_COPY is mandatory for any of them)."""
    return frozenset(s for s in S if is_supported(s, flags))


def next_state(cur: VfioDeviceState, target: VfioDeviceState, flags: int) -> VfioDeviceState:
    """``vfio_mig_get_next_state``: the next single arc from ``cur`` towards ``target``.

    Raises :class:`VfioInvalidTransition` exactly where the kernel returns -EINVAL: the current state is
    unsupported (this includes ERROR, which only VFIO_DEVICE_RESET leaves), the target is unsupported
    (including ERROR itself), or the table leads to ERROR (STOP_COPY -> PRE_COPY / PRE_COPY_P2P; see
    ``hangs_unfixed_kernel``: kernels without the stable fix hang instead).
    """
    if not is_supported(cur, flags):
        raise VfioInvalidTransition(cur, target, flags, "current state not supported by the device")
    if not is_supported(target, flags):
        raise VfioInvalidTransition(cur, target, flags, "target state not supported by the device")
    step = FSM_TABLE[cur][target]
    # The ERROR test is the stable fix "Terminate the skip loop on the ERROR sentinel" (Fixes:
    # 4db52602a607); Debian's 6.12.117 source has it. Kernels without it spin forever here for the blocked
    # arcs (state_flags_table[ERROR] is ~0U, so ERROR is never "supported"): a soft lockup, not -EINVAL.
    while step is not S.ERROR and not is_supported(step, flags):
        step = FSM_TABLE[step][target]
    if step is S.ERROR:
        raise VfioInvalidTransition(
            cur, target, flags, "transition blocked by the kernel's FSM", hangs_unfixed_kernel=True
        )
    return step


def walk(cur: VfioDeviceState, target: VfioDeviceState, flags: int) -> list[VfioDeviceState]:
    """The states a driver steps through for one SET of ``target`` (excluding ``cur``; empty if equal).

    This is the loop every variant driver runs (``while (cur != new) cur = next_state(...)``). The first
    step already raises when the request is invalid; later steps never do, because the kernel's table only
    routes through states the device supports (a property the tests check exhaustively).
    """
    path: list[VfioDeviceState] = []
    state = cur
    # Drivers (mtty, mlx5, hisi, ...) loop while the state differs, so asking for the current state is
    # a successful no-op without consulting the table, even for ERROR -> ERROR.
    while state != target:
        state = next_state(state, target, flags)
        path.append(state)
        if len(path) > len(S):
            raise AssertionError(f"FSM walk {cur.name}->{target.name} does not terminate")  # table corruption
    return path


def opens_data_fd(frm: VfioDeviceState, to: VfioDeviceState) -> bool:
    """Whether the single arc ``frm -> to`` returns a new data fd.

    Arcs into RESUMING, and arcs from outside the saving group into it, start a new data session; moves
    inside the group keep the fd. Leaving the group or RESUMING ends the session.
    """
    if to is S.RESUMING:
        return frm is not S.RESUMING
    return to in SAVING_GROUP and frm not in SAVING_GROUP


def set_returns_data_fd(cur: VfioDeviceState, target: VfioDeviceState, flags: int) -> bool:
    """Whether the SET ioctl of ``target`` returns a data fd (only the final arc can: saving-group states
    are never interior steps)."""
    path = walk(cur, target, flags)
    if not path:
        return False
    prev = [cur, *path][-2]
    return opens_data_fd(prev, path[-1])


def reset_state() -> VfioDeviceState:
    """``VFIO_DEVICE_RESET``: the only way out of ERROR; the device is RUNNING afterwards."""
    return S.RUNNING
