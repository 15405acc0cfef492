"""Which guest a scenario runs and where its memory is checked, written once for both backends.

The loader builds the spec (contract.guest), the executor boots and checks the guest, and the model
(reference_impl.guest.predict_guest) predicts what the check finds on the same side: the rules for "which guest
runs" and "where does it live after the scenario" must be the same on both sides.
"""

from __future__ import annotations

from contract.guest import GUEST_KERNEL_MIB, GuestSpec
from contract.outcome import Outcome
from contract.scenario import Scenario
from contract.sizes import whole_mib


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
