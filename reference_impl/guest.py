"""A scenario's running guest: its plain-data spec (``[guest]``) and what the model predicts the memory check finds.

The spec lives here, not in harness.guest, because :class:`reference_impl.scenario.Scenario` carries it and the
model must stay free of the harness's dependencies (pexpect, QEMU). harness.guest.session re-exports it.

What the model predicts (:func:`predict_guest`) is deliberately simple: QEMU's contract for every migration mode
is that the guest it hands over is one consistent moment of the guest's memory, so a correct QEMU leaves a guest
that answers and has no bad page, on whichever side the guest lives on after the scenario. Anything else that
real QEMU shows (a lost dirty page, a guest that panicked after the switchover) is a divergence to report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reference_impl.outcome import Outcome, VmState
    from reference_impl.scenario import Scenario

GUEST_IMAGES = ("default",)
_SIZE = re.compile(r"^(\d+)\s*([KMG]?)i?B?$", re.IGNORECASE)
# Runstates in which the guest OS is gone or never ran, so nothing can answer a check. A paused guest
# (paused, postmigrate, prelaunch) is resumed by the executor for the check and counts as answering.
_NO_GUEST_RUNSTATES = frozenset({"inmigrate", "shutdown", "internal-error", "guest-panicked", "io-error"})


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


def guest_runs(scenario: Scenario) -> bool:
    """Whether the scenario boots a guest: a ``[guest]`` table, or ``requires = ["guest"]`` (defaults then)."""
    return scenario.guest is not None or "guest" in scenario.requires


# What the guest kernel, busybox and page tables need besides the workload (docs/guests.md: "~40 MiB").
GUEST_KERNEL_MIB = 40


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
        room = min(parse_mib(vm.memory) for vm in (scenario.source, scenario.destination)) - GUEST_KERNEL_MIB
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


def predict_guest(scenario: Scenario, outcome: Outcome) -> dict[str, Any] | None:
    """The model's ``Outcome.guest`` for ``outcome`` (the model's own prediction of the rest), or None when the
    scenario runs no guest or no VM ever started (refused at startup: no guest booted, nothing to check).

    Otherwise {"alive": True, "bad_pages": 0} on :func:`checked_side` when that side's VM is still there and
    its runstate can run the guest; {"alive": False, "bad_pages": 0} when the model predicts that VM gone
    (null) or in a state with no guest (e.g. a destination still ``inmigrate`` after a failed load). The count
    of pages checked is not predicted: it depends on the workload size only and is informative.
    """
    if not guest_runs(scenario):
        return None
    if outcome.stage == "startup" or outcome.verdict == "skipped":
        return None
    side = checked_side(outcome)
    state: VmState | None = outcome.destination if side == "destination" else outcome.source
    alive = state is not None and state.runstate not in _NO_GUEST_RUNSTATES
    return {"alive": alive, "bad_pages": 0}
