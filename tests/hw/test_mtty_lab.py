"""End-to-end VFIO gating with a real VFIO device: the mtty lab (nested guest, mdev sample driver).

One boot of the lab runs every scenario of tests/hw/scenarios/ through harness.executor (loaded by
harness.loader, exactly as user files are). Each test asserts QEMU 10's exact messages and VM
states as measured in docs/vfio-lab.md (measured gating results), then compares the outcome with the reference model
under the provider's host facts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contract.outcome import Outcome, VmState
from contract.scenario import Scenario
from harness.binaries import QemuBinary
from harness.loader import load_scenarios
from harness.suite import SUITE_DIR
from harness.vfio.provider import MttyLabProvider
from harness.vfio_lab.build import KERNEL_SERIES, lab_cache
from harness.vfio_lab.kernels import LabKernel, built_image, lab_kernels

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

# The scenario files (loaded by harness.loader like any user file); benchmarks/lab.py runs the same set.
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

RUNNING_SOURCE = VmState(status="none", runstate="running")


def _scenarios() -> dict[str, Scenario]:
    return {s.id: s for s in load_scenarios([SCENARIO_DIR])}


def _run(provider: MttyLabProvider, scenarios: list[Scenario], binary: QemuBinary) -> dict[str, Outcome]:
    outcomes = asyncio.run(provider.run_batch(scenarios, [binary]))
    return {o.scenario: o for o in outcomes}


@pytest.fixture(scope="module")
def stock_outcomes(stock_lab: MttyLabProvider, lab_binary: QemuBinary) -> dict[str, Outcome]:
    return _run(stock_lab, list(_scenarios().values()), lab_binary)


def _outcome(outcomes: dict[str, Outcome], scenario_id: str, series: str = KERNEL_SERIES) -> Outcome:
    assert scenario_id in outcomes, f"the lab returned no outcome for {scenario_id} (got {sorted(outcomes)})"
    outcome = outcomes[scenario_id]
    assert outcome.verdict != "skipped", outcome.skip_reason
    assert outcome.vfio_provider == "mtty"
    assert outcome.kernel is not None and outcome.kernel.startswith(f"{series}.")
    return outcome


def _uuid(outcome: Outcome, device_id: str = "vfio0") -> str:
    names = outcome.extra.get("vfio_names") or {}
    assert device_id in names, f"no host name recorded for {device_id}: {outcome.extra}"
    return str(names[device_id])


def _normalised_error(outcome: Outcome) -> str | None:
    """The error with every device's mdev UUID (a fresh one per launch) replaced by its scenario id."""
    if outcome.error is None:
        return None
    error = outcome.error
    for device, uuid in (outcome.extra.get("vfio_names") or {}).items():
        error = error.replace(str(uuid), f"<{device}>")
    return error


def _agrees_with_model(outcome: Outcome, provider: MttyLabProvider, binary: QemuBinary) -> None:
    """The model, given the lab's host facts, predicts the same contract fields and VFIO device states
    (after normalising). A model that does not import is a broken installation: the test fails."""
    from harness.compare import compare
    from reference_impl import predict

    scenario = _scenarios()[outcome.scenario]
    reference = predict(scenario, binary.version, provider.host_facts())
    comparison = compare(reference, outcome)
    assert comparison.agree, f"model and QEMU differ: {comparison.differences}"


def test_precopy_with_workaround_props_completes(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-precopy-workaround")
    assert outcome.verdict == "completed", outcome.error
    assert outcome.error is None
    assert outcome.source is not None and outcome.source.status == "completed"
    assert outcome.destination is not None and outcome.destination.status == "completed"
    # The kernel's migration v2 state machine really ran (mtty's dyndbg log, via /dev/kmsg in L1).
    arcs = outcome.extra.get("kernel_vfio_transitions") or {}
    source, destination = arcs.get("source:vfio0", []), arcs.get("destination:vfio0", [])
    for arc in ("RUNNING->PRE_COPY", "PRE_COPY->PRE_COPY_P2P", "PRE_COPY_P2P->STOP_COPY", "STOP_COPY->STOP"):
        assert arc in source, f"source transitions {source}"
    assert "STOP->RESUMING" in destination and "RESUMING->STOP" in destination, f"destination {destination}"
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_default_props_fail_on_stock_vfio_ko(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-precopy-default-props")
    assert outcome.verdict == "failed"
    assert outcome.stage == "migration"
    assert outcome.error == "ram_save_setup failed: Operation not supported"
    assert outcome.source is not None and outcome.source.status == "failed"
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_postcopy_is_refused_by_the_migrate_command(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-postcopy-refused")
    assert outcome.verdict == "refused"
    assert outcome.stage == "migrate"
    assert outcome.error == f"{_uuid(outcome)}: VFIO migration is not supported with postcopy migration"
    assert outcome.source == RUNNING_SOURCE
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_background_snapshot_is_refused(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-background-snapshot-refused")
    assert outcome.verdict == "refused"
    assert outcome.stage == "migrate"
    assert outcome.error == f"{_uuid(outcome)}: VFIO migration is not supported with background snapshot"
    assert outcome.source == RUNNING_SOURCE
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_enable_migration_off_is_a_blocker(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-enable-migration-off")
    assert outcome.verdict == "refused"
    assert outcome.stage == "migrate"
    assert outcome.error == f"{_uuid(outcome)}: Migration is disabled for VFIO device"
    assert outcome.source == RUNNING_SOURCE
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_mdpy_with_enable_migration_on_fails_realize(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-mdpy-on")
    uuid = _uuid(outcome)
    assert outcome.verdict == "refused"
    assert outcome.stage == "startup"
    assert outcome.error == f"vfio {uuid}: {uuid}: VFIO migration is not supported in kernel"
    assert outcome.source is None and outcome.destination is None
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_two_devices_one_without_p2p_block_migration(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-two-devices-one-no-p2p")
    assert outcome.verdict == "refused"
    assert outcome.stage == "migrate"
    assert outcome.error == "Multiple VFIO devices migration is supported only if all of them support P2P migration"
    assert outcome.source == RUNNING_SOURCE
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_device_without_migration_support_is_a_blocker(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-no-migration-auto")
    assert outcome.verdict == "refused"
    assert outcome.stage == "migrate"
    assert outcome.error == f"{_uuid(outcome)}: VFIO migration is not supported in kernel"
    assert outcome.source == RUNNING_SOURCE
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_device_without_dma_logging_is_blocked_with_auto(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-no-dirty-logging-auto")
    assert outcome.verdict == "refused"
    assert outcome.stage == "migrate"
    assert outcome.error == f"{_uuid(outcome)}: VFIO device doesn't support device and IOMMU dirty tracking"
    assert outcome.source == RUNNING_SOURCE
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_device_without_dma_logging_migrates_with_on(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    """Without DMA-logging ops QEMU never asks the kernel for device dirty reports, so the stock
    vfio.ko's broken reports (P3) do not matter: enable-migration=on alone completes."""
    outcome = _outcome(stock_outcomes, "lab-no-dirty-logging-on")
    assert outcome.verdict == "completed", outcome.error
    assert outcome.source is not None and outcome.source.status == "completed"
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_device_without_precopy_goes_straight_to_stop_copy(
    stock_outcomes: dict[str, Outcome], stock_lab: MttyLabProvider, lab_binary: QemuBinary
) -> None:
    outcome = _outcome(stock_outcomes, "lab-no-precopy-workaround")
    assert outcome.verdict == "completed", outcome.error
    source = (outcome.extra.get("kernel_vfio_transitions") or {}).get("source:vfio0", [])
    assert "STOP->STOP_COPY" in source, source
    assert not any("PRE_COPY" in arc for arc in source), source
    _agrees_with_model(outcome, stock_lab, lab_binary)


def test_default_props_complete_with_rebuilt_vfio_ko(iovabm_lab: MttyLabProvider, lab_binary: QemuBinary) -> None:
    """P3 fix B: with iova_bitmap linked into vfio.ko the device's dirty reports work."""
    scenario = _scenarios()["lab-precopy-default-props"]
    outcome = _outcome(_run(iovabm_lab, [scenario], lab_binary), scenario.id)
    assert iovabm_lab.host_facts().vfio_dirty_report_works
    assert outcome.verdict == "completed", outcome.error
    assert outcome.source is not None and outcome.source.status == "completed"
    assert outcome.extra.get("lab_variant") == "iovabm"
    _agrees_with_model(outcome, iovabm_lab, lab_binary)


# Every lab kernel but the default (which the tests above ran), from the table (harness/vfio_lab/kernels.py).
OTHER_KERNELS = [k for k in lab_kernels() if not k.default]


@pytest.mark.parametrize("row", OTHER_KERNELS, ids=lambda k: k.series)
def test_kernel_matrix(row: LabKernel, stock_outcomes: dict[str, Outcome], lab_binary: QemuBinary) -> None:
    """The same set on another lab kernel. Devices of a personality the kernel's mtty offers behave exactly
    as on the default kernel (same verdict, stage and message after normalising the UUIDs) and agree with the
    model; the others are skipped naming the kernel's reason (6.1's mtty has no migration support).

    A kernel buildable with the host's tools alone (``cheap``) is built on first use (6.1: about 40 s); one
    that needs a newer suite's chroot runs only where its lab is already built (scripts/setup-lab.sh
    --series S), so this file never pays a toolchain and a 300 MB download unasked."""
    if not row.cheap and built_image(row.series, lab_cache()) is None:
        pytest.skip(
            f"the {row.series} lab is not built here (it needs a {row.toolchain} chroot with {row.compiler}): "
            f"build it with scripts/setup-lab.sh --series {row.series}"
        )
    provider = MttyLabProvider("stock", series=row.series)
    outcomes = _run(provider, list(_scenarios().values()), lab_binary)
    assert sorted(outcomes) == sorted(_scenarios())
    ran = []
    for scenario in _scenarios().values():
        outcome = outcomes[scenario.id]
        assert outcome.kernel is not None and outcome.kernel.startswith(f"{row.series}.")
        assert outcome.extra.get("lab_kernel") == row.series
        personalities = {d.personality or "migratable" for d in scenario.source.devices if d.driver == "vfio-pci"}
        if not personalities <= set(row.recipe.personalities):
            assert outcome.verdict == "skipped"
            assert row.recipe.note and row.recipe.note in (outcome.skip_reason or "")
            continue
        ran.append(scenario.id)
        default = stock_outcomes[scenario.id]
        assert (outcome.verdict, outcome.stage) == (default.verdict, default.stage), scenario.id
        assert _normalised_error(outcome) == _normalised_error(default), scenario.id
        _agrees_with_model(outcome, provider, lab_binary)
    assert ran, f"no scenario of the set can run on the {row.series} lab"


# The conformance suite's scenarios with migration-events=on (QEMU 9.1+ sends VFIO_MIGRATION events).
EVENTS_SCENARIOS = SUITE_DIR


def test_vfio_states_are_compared_with_real_events(stock_lab: MttyLabProvider, lab_binary: QemuBinary) -> None:
    """QEMU's VFIO_MIGRATION sequences, as the executor recorded them, equal the model's; and the comparison
    really looks at them: a deliberately wrong predicted sequence diverges in vfio_states."""
    from harness.compare import compare
    from reference_impl import predict

    scenarios = load_scenarios(sorted(EVENTS_SCENARIOS.glob("vfio-events-*.toml")))
    assert scenarios, "no vfio-events-* scenario in the suite"
    outcomes = _run(stock_lab, scenarios, lab_binary)
    sent = 0
    for scenario in scenarios:
        outcome = _outcome(outcomes, scenario.id)
        reference = predict(scenario, lab_binary.version, stock_lab.host_facts())
        assert reference.vfio_states is not None, reference.extra
        comparison = compare(reference, outcome)
        assert comparison.agree, f"{scenario.id}: model and QEMU differ: {comparison.differences}"
        if not outcome.vfio_states:
            continue
        sent += 1
        wrong = {key: list(reversed(states)) for key, states in reference.vfio_states.items()}
        reference.vfio_states = wrong
        assert "vfio_states" in compare(reference, outcome).differences, scenario.id
    assert sent >= 3, "QEMU sent VFIO_MIGRATION events in fewer scenarios than expected"
