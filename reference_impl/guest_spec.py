"""A scenario's ``[guest]`` table as plain data, and the size arithmetic every reader of it shares.

Its own module, below both the scenario data (reference_impl.scenario carries a :class:`GuestSpec`) and the
model's guest prediction (reference_impl.guest, which reads a Scenario): the spec depends on neither, so
neither import goes round in a circle. It stays free of the harness's dependencies (pexpect, QEMU);
harness.guest.session re-exports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GUEST_IMAGES = ("default",)
_SIZE = re.compile(r"^(\d+)\s*([KMG]?)i?B?$", re.IGNORECASE)


def parse_mib(size: str) -> int:
    """``"64M"``, ``"1G"``, ``"512MiB"`` -> MiB. QEMU's suffix convention: a bare number means MiB."""
    m = _SIZE.match(size.strip())
    if not m:
        raise ValueError(f'size {size!r}: expected a number with an optional K, M or G suffix, e.g. "64M"')
    number, unit = int(m.group(1)), m.group(2).upper()
    if unit == "K":
        if number % 1024:
            raise ValueError(f"size {size!r} is not a whole number of MiB")
        return number // 1024
    return number * 1024 if unit == "G" else number


@dataclass(frozen=True)
class GuestSpec:
    """The ``[guest]`` table of a scenario.

    memory: how much the workload fills and checks (it must fit in the VM's [vm] memory, leaving ~40 MiB for
    the kernel). dirty_rate: pages per second the workload rewrites while migrating (0: it only fills once).
    image: "default" (the Debian-package image of harness.guest.image); the only kind there is so far.
    boot_timeout: bound for the first shell prompt (not a scenario key: a property of the machine running it).
    """

    memory: str = "64M"
    dirty_rate: int = 2000
    image: str = "default"
    boot_timeout: float = 60.0

    def __post_init__(self) -> None:
        if parse_mib(self.memory) < 1:
            raise ValueError("[guest] memory must be at least 1M")
        if self.dirty_rate < 0:
            raise ValueError("[guest] dirty-rate must be >= 0 (pages per second)")
        if self.image not in GUEST_IMAGES:
            raise ValueError(f'[guest] image {self.image!r}: only "default" exists')

    @property
    def memory_mib(self) -> int:
        return parse_mib(self.memory)


# What the guest kernel, busybox and page tables need besides the workload (docs/guests.md: "~40 MiB").
GUEST_KERNEL_MIB = 40
