"""A scenario's running guest: its plain-data spec (``[guest]``) and what the model predicts the memory check finds.

The spec itself is reference_impl.guest_spec: :class:`reference_impl.scenario.Scenario` carries it, and this
module reads a Scenario, so the spec sits below both.

What the model predicts (:func:`predict_guest`) is deliberately simple: QEMU's contract for every migration mode
is that the guest it hands over is one consistent moment of the guest's memory, so a correct QEMU leaves a guest
that answers and has no bad page, on whichever side the guest lives on after the scenario. Anything else that
real QEMU shows (a lost dirty page, a guest that panicked after the switchover) is a divergence to report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reference_impl.guest_spec import GUEST_KERNEL_MIB, GuestSpec, parse_mib

if TYPE_CHECKING:
    from reference_impl.outcome import Outcome, VmState
    from reference_impl.scenario import Scenario

# Runstates in which the guest OS is gone or never ran, so nothing can answer a check. A paused guest
# (paused, postmigrate, prelaunch) is resumed by the executor for the check and counts as answering.
_NO_GUEST_RUNSTATES = frozenset({"inmigrate", "shutdown", "internal-error", "guest-panicked", "io-error"})


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
