"""What the executor adds to a scenario beyond its steps, so the model (which must predict the result) reads
the same values instead of a copy: the harness's bounds and the pacing it applies before a postcopy switch.
"""

from __future__ import annotations

from collections.abc import Iterable

from contract.scenario import Step

# The default bound of one wait (``--timeout``): the model's timeouts say this many seconds.
DEFAULT_WAIT_TIMEOUT_S = 60.0
# Precopy bandwidth before a scenario's start-postcopy (harness.execution.steps pace_for_postcopy): 256 MiB of
# zero pages take about half a second at this rate, ample time for the switch.
POSTCOPY_PACING_BYTES_PER_S = 1_000_000


def paced_for_postcopy(steps: Iterable[Step]) -> bool:
    """Whether the executor sets max-bandwidth :data:`POSTCOPY_PACING_BYTES_PER_S` on the source before its
    migrate: the scenario switches to postcopy (a start-postcopy step) and sets no max-bandwidth itself."""
    listed = tuple(steps)
    return any(step.action == "start-postcopy" for step in listed) and not any(
        "max-bandwidth" in step.parameters for step in listed if step.action == "set-parameters"
    )


# The start of the model's not-modelled reason for a scenario that ends while a migration runs at full speed
# (reference_impl.timing): the fuzzer (harness.fuzz.lockstep) lets a sequence go on past such a prefix, since a
# wait step after it makes the sequence predictable again.
END_RACE = "the final states while a migration runs at full speed"
