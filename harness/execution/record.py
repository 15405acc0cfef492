"""What an outcome records beyond the contract's fields about both QEMUs: their events, how they ended."""

from __future__ import annotations

from contract.outcome import Outcome
from harness.pair import MigrationPair


def record_events(outcome: Outcome, pair: MigrationPair) -> None:
    """Each side's MIGRATION status sequence and the VFIO_MIGRATION device states (reference_impl.vfio.events
    predicts them), read while the QEMUs are still there."""
    if outcome.verdict == "skipped":
        return
    outcome.events = {
        "source": pair.source.migration_events(),
        "destination": pair.destination.migration_events(),
    }
    states: dict[str, list[str]] = {}
    states.update(pair.source.vfio_states())
    for device, sequence in pair.destination.vfio_states().items():
        states[f"destination:{device}"] = sequence
    if states:
        outcome.vfio_states = states


def record_exit(outcome: Outcome, pair: MigrationPair) -> None:
    """After the pair closed. A QEMU that ``quit`` did not end (stuck in migration_shutdown, a blocked monitor)
    is not part of the contract's outcome, but is worth a line: ``extra.shutdown`` = {side: what it took}.

    A QEMU that died by a fault signal: ``extra.crash`` = {side: signal, the kernel's fault lines naming the
    thread}, so a crash is actionable without a core file. ``extra.query_guard``: waits of the destination's
    query guard that hit their bound (harness.listen_guard)."""
    notes = {vm.name: vm.shutdown_note for vm in (pair.source, pair.destination) if vm.shutdown_note}
    if notes:
        outcome.extra["shutdown"] = notes
    crashes = {vm.name: record.as_extra() for vm in (pair.source, pair.destination) if (record := vm.crash())}
    if crashes:
        outcome.extra["crash"] = crashes
    if pair.guard_notes:
        outcome.extra["query_guard"] = list(pair.guard_notes)
