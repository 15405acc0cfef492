"""A scenario's running guest, as plain data: the ``[guest]`` spec (the rules that read a whole scenario or
outcome are in contract.guest_rules, above both this module and contract.scenario)."""

from __future__ import annotations

from dataclasses import dataclass

from contract.sizes import whole_mib

GUEST_IMAGES = ("default",)
# What the guest kernel, busybox and page tables need besides the workload (docs/guests.md: "~40 MiB").
GUEST_KERNEL_MIB = 40


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
        if whole_mib(self.memory) < 1:
            raise ValueError("[guest] memory must be at least 1M")
        if self.dirty_rate < 0:
            raise ValueError("[guest] dirty-rate must be >= 0 (pages per second)")
        if self.image not in GUEST_IMAGES:
            raise ValueError(f'[guest] image {self.image!r}: only "default" exists')

    @property
    def memory_mib(self) -> int:
        return whole_mib(self.memory)
