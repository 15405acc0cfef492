"""A scenario's running guest, as plain data: the ``[guest]`` spec and where its memory is checked.

Both backends need it: the loader builds the spec, the executor boots and checks the guest, and the model
(reference_impl.guest.predict_guest) predicts what the check finds on the same side, so the rules for "which
guest runs" and "where does it live after the scenario" are written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract.sizes import whole_mib

if TYPE_CHECKING:
    from contract.outcome import Outcome
    from contract.scenario import Scenario

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


def guest_runs(scenario: Scenario) -> bool:
    """Whether the scenario boots a guest: a ``[guest]`` table, or ``requires = ["guest"]`` (defaults then)."""
    return scenario.guest is not None or "guest" in scenario.requires


def effective_guest(scenario: Scenario) -> GuestSpec | None:
    """The guest the scenario runs, or None.

    A bare ``requires = ["guest"]`` (no ``[guest]`` table, e.g. a scenario made guest-checked by a test) gets the
    defaults, with the workload shrunk to fit the smaller VM next to the guest kernel: a workload that cannot fill
    its memory would report a dead guest instead of checking anything."""
    if scenario.guest is not None:
        return scenario.guest
    if "guest" not in scenario.requires:
        return None
    default = GuestSpec()
    try:
        room = min(whole_mib(vm.memory) for vm in (scenario.source, scenario.destination)) - GUEST_KERNEL_MIB
    except ValueError:
        return default
    return GuestSpec(memory=f"{max(1, min(default.memory_mib, room))}M")


def checked_side(outcome: Outcome) -> str:
    """Where the guest lives after the scenario, so where its memory is checked.

    The destination when the source's migration completed (the guest moved, or for a background snapshot: the
    snapshot was loaded into the destination); otherwise the source, whose guest never left: a migration that
    was refused, failed, cancelled or never started.
    """
    if outcome.source is not None and outcome.source.status == "completed":
        return "destination"
    return "source"
