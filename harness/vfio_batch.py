"""The VFIO provider's batch: every VFIO item of a run in one provider call (the mtty lab boots its nested
guest once for all of them), then the model with the provider's host facts.

Two kinds of items go in one batch: same-version scenarios, which the provider runs on every binary of the
run (each scenario on each binary), and cross-version items (``pairs``: a scenario, the source's binary and the
destination's), which a provider that says ``runs_pairs`` runs with each side on its own binary, as the
executor does on the host. A provider without ``runs_pairs`` (real host devices) gets no pairs: those items
run one by one on the host and, with no allocator, are skipped naming the reason, like a VFIO item without
a provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario
from harness.item_logs import provider_log_folder
from harness.recorder import ItemRecorder
from harness.targets import Target
from harness.vfio_lab.inside import pair_key


class BatchRun(Protocol):
    """What the batch needs of the run (harness.runner's): its options (RunOptions), columns, recorder and
    model."""

    options: Any
    targets: list[Target]
    recorder: ItemRecorder

    def predict_item(self, scenario: Scenario, target: Target, host: HostFacts) -> Outcome: ...


class BatchProvider(Protocol):
    """harness.runner.VfioProvider: a batch of scenarios on binaries (``pairs``: only with ``runs_pairs``)."""

    async def run_batch(self, scenarios: Sequence[Scenario], binaries: Sequence[Any]) -> list[Outcome]: ...

    def host_facts(self) -> HostFacts: ...


Item = tuple[Scenario, Target]
# One key per real outcome of a batch: (scenario id, column).
Key = tuple[str, str]


def runs_pairs(provider: object) -> bool:
    """Whether the provider takes cross-version items (``run_batch(..., pairs=...)``)."""
    return bool(getattr(provider, "runs_pairs", False))


def with_kernel(outcome: Outcome, host: HostFacts) -> Outcome:
    """The model's outcome names the kernel whose facts it was given (the lab guest's, for VFIO)."""
    if outcome.kernel is None:
        outcome.kernel = host.kernel
    return outcome


def target_of(outcome: Outcome, targets: Sequence[Target]) -> Target | None:
    """The same-version column a provider's outcome belongs to: by binary path, else by version."""
    for target in targets:
        if target.binary is not None and outcome.binary and str(target.binary.path) == outcome.binary:
            return target
    for target in targets:
        if str(target.version) == outcome.qemu_version:
            return target
    return None


def pair_target_of(outcome: Outcome, pairs: Sequence[Item]) -> Target | None:
    """The cross-version column of a provider's outcome: both binaries' paths (the executor records the
    destination's in ``extra.destination_binary``)."""
    destination = outcome.extra.get("destination_binary")
    if destination is None:
        return None
    for scenario, target in pairs:
        if scenario.id != outcome.scenario or target.binary is None or target.destination_binary is None:
            continue
        if str(target.binary.path) == outcome.binary and str(target.destination_binary.path) == str(destination):
            return target
    return None


async def run_vfio_batch(
    run: BatchRun, scenarios: Sequence[Scenario], provider: BatchProvider, pairs: Sequence[Item] = ()
) -> None:
    """Hand every VFIO item to the provider at once (``--repeat N``: N batches), then run the model with the
    provider's host. ``pairs``: cross-version items (only for a provider that :func:`runs_pairs`)."""
    options = run.options
    binary_targets = [t for t in run.targets if t.binary is not None]
    binaries = [t.binary for t in binary_targets if t.binary is not None]
    requested = [(s, t.binary, t.destination_binary) for s, t in pairs]
    rounds = max(1, options.repeat)
    real: list[dict[Key, Outcome]] = [{} for _ in range(rounds)]
    batch_errors: list[BaseException | None] = [None] * rounds
    if options.backend in ("both", "qemu") and (binaries or requested):
        for round_ in range(rounds):
            try:
                extra: dict[str, Any] = {"pairs": requested} if requested else {}
                for outcome in await provider.run_batch(scenarios if binaries else [], binaries, **extra):
                    target = pair_target_of(outcome, pairs) or (
                        None if "destination_binary" in outcome.extra else target_of(outcome, binary_targets)
                    )
                    if target is not None:
                        real[round_][(outcome.scenario, target.column)] = outcome
            except Exception as exc:
                batch_errors[round_] = exc
    host = provider.host_facts()
    items: list[Item] = [(s, t) for t in run.targets for s in scenarios]
    items += pairs  # cross-version columns: never among the run's targets
    for scenario, target in items:
        _record(run, provider, host, scenario, target, real, batch_errors)


def _record(
    run: BatchRun,
    provider: BatchProvider,
    host: HostFacts,
    scenario: Scenario,
    target: Target,
    real: list[dict[Key, Outcome]],
    batch_errors: list[BaseException | None],
) -> None:
    """One item of the batch into the results: its real outcome per round (or why there is none), the model's."""
    options = run.options
    outcomes: dict[str, Outcome | BaseException] = {}
    reals: list[Outcome | BaseException] = []
    if options.backend in ("both", "qemu") and target.binary is not None:
        # The provider's own error for an item (e.g. ResourceUnavailable raised in the lab).
        item_errors = getattr(provider, "item_errors", None) or {}
        binary_key = str(target.binary.path)
        if target.destination_binary is not None:
            binary_key = pair_key(target.binary, target.destination_binary)
        for round_, got in enumerate(r.get((scenario.id, target.column)) for r in real):
            reals.append(
                got
                or batch_errors[round_]
                or item_errors.get((scenario.id, binary_key))
                or RuntimeError(f"VFIO provider {options.vfio_provider!r} returned no outcome for this scenario")
            )
        outcomes["qemu"] = reals[0]
    if options.backend in ("both", "reference") or target.binary is None:
        try:
            outcomes["reference"] = with_kernel(run.predict_item(scenario, target, host), host)
        except Exception as exc:
            outcomes["reference"] = exc
    if len(reals) > 1:
        run.recorder.record_repeated(scenario, target, reals, outcomes.get("reference"))
    else:
        qemu = outcomes.get("qemu")
        logs = provider_log_folder(qemu) if isinstance(qemu, Outcome) else None
        run.recorder.record(scenario, target, outcomes, provider_logs=logs)
