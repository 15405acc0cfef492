"""What the model predicts a scenario's guest memory check finds (the spec itself: contract.guest).

Deliberately simple: QEMU's contract for every migration mode is that the guest it hands over is one consistent
moment of the guest's memory, so a correct QEMU leaves a guest that answers and has no bad page, on whichever side
the guest lives on after the scenario. Anything else that real QEMU shows (a lost dirty page, a guest that panicked
after the switchover) is a divergence to report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contract.guest_rules import checked_side, guest_runs

if TYPE_CHECKING:
    from contract.outcome import Outcome, VmState
    from contract.scenario import Scenario

# Runstates in which the guest OS is gone or never ran, so nothing can answer a check. A paused guest
# (paused, postmigrate, prelaunch) is resumed by the executor for the check and counts as answering.
_NO_GUEST_RUNSTATES = frozenset({"inmigrate", "shutdown", "internal-error", "guest-panicked", "io-error"})


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
