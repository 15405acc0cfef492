"""The suite's VFIO scenarios on this host's real VFIO devices, each compared with the model.

Configure the devices with ``MIGCONFORM_VFIO_DEVICES=0000:3b:00.1,0000:3b:00.2`` (bound to vfio-pci or
a VFIO variant driver; ``MIGCONFORM_VFIO_ALLOW_REBIND=1`` lets the run bind them, and their IOMMU group,
and restore the drivers afterwards). Source and destination hold their devices at once, so give two
devices of one type per VFIO device of a scenario (four cover the two-device scenarios). Each device's
personality is read from its driver (VFIO_DEVICE_FEATURE_MIGRATION, DMA_LOGGING probe); scenarios asking
for a personality the devices lack are skipped with that reason. The model runs at each binary's version
with this host's facts (``MIGCONFORM_VFIO_DIRTY_REPORT=works|fails`` overrides what the kernel's
configuration says about VFIO dirty-page reports).

The mtty lab makes the same run without hardware: ``migconform certify --vfio-provider mtty``
(tests/hw/test_certify.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario
from harness import settings
from harness.binaries import QemuBinary, discover_binaries
from harness.compare import compare, skip_reason
from harness.loader import load_scenarios
from harness.runner import default_predict
from harness.suite import SUITE_DIR
from harness.vfio.host import configured_devices
from harness.vfio.host_provider import HostDeviceRefused, HostProvider

pytestmark = [pytest.mark.qemu]

SUITE = SUITE_DIR
HOW_TO = (
    "no real VFIO device configured: set MIGCONFORM_VFIO_DEVICES=0000:3b:00.1,0000:3b:00.2 (two devices of "
    "one type per VFIO device of a scenario, bound to vfio-pci) to run these; without hardware, "
    "tests/hw/test_certify.py runs them on the mtty lab"
)
# The groups the brief names, all from the suite (the rest of the vfio-*.toml files run as well).
SCENARIOS = {s.id: s for s in load_scenarios(sorted(SUITE.glob("vfio-*.toml")))}
GUEST_CHECK = "vfio-precopy-migratable"


def _binaries() -> list[QemuBinary]:
    try:
        return discover_binaries()
    except Exception:  # reported by the binaries fixture as a skip reason
        return []


@pytest.fixture(scope="module")
def provider() -> Iterator[HostProvider]:
    names = configured_devices()
    if not names:
        pytest.skip(HOW_TO)
    host = HostProvider(
        names,
        allow_rebind=settings.vfio_allow_rebind(),
        dirty_report_works=settings.vfio_dirty_report(),
    )
    try:
        host.prepare()
    except HostDeviceRefused as exc:
        pytest.fail(f"the configured VFIO devices cannot be used: {exc}")
    yield host
    host.close()


@pytest.fixture(scope="module")
def binaries() -> list[QemuBinary]:
    found = _binaries()
    if not found:
        pytest.skip("no QEMU binary found (QEMU_BINARY, scripts/setup.sh, PATH)")
    return found


@pytest.fixture(scope="module")
def batch(provider: HostProvider, binaries: list[QemuBinary]) -> dict[tuple[str, str], Outcome]:
    """Every VFIO scenario on every binary, in one batch (the devices are shared)."""
    scenarios = [*SCENARIOS.values(), _with_guest(SCENARIOS[GUEST_CHECK])]
    outcomes = asyncio.run(provider.run_batch(scenarios, binaries))
    return {(o.scenario, str(o.binary)): o for o in outcomes}


@pytest.fixture(scope="module")
def facts(provider: HostProvider) -> HostFacts:
    return provider.host_facts()


def _with_guest(scenario: Scenario) -> Scenario:
    """The precopy scenario with a guest whose memory is checked after the migration."""
    return replace(scenario, id=f"{scenario.id}-guest", requires=(*scenario.requires, "guest"))


def _check(scenario: Scenario, binary: QemuBinary, batch: dict[tuple[str, str], Outcome], facts: HostFacts) -> Outcome:
    real = batch.get((scenario.id, str(binary.path)))
    assert real is not None, f"the host provider returned no outcome for {scenario.id} on {binary.path}"
    assert real.vfio_provider == "host"
    assert real.extra.get("host_devices"), "the device facts were not recorded"
    if real.verdict == "skipped":
        pytest.skip(real.skip_reason or "skipped by the executor")
    model = default_predict()(scenario, binary.version, facts)
    reason = skip_reason(model, real)
    if reason is not None:
        pytest.skip(reason)
    comparison = compare(model, real, column=str(binary.version))
    assert comparison.agree, f"{scenario.id} on {binary.version}: model and QEMU differ: {comparison.differences}"
    return real


@pytest.mark.parametrize("binary_index", range(len(_binaries())) or [0])
@pytest.mark.parametrize("scenario_id", sorted(SCENARIOS))
def test_vfio_scenario(
    scenario_id: str,
    binary_index: int,
    binaries: list[QemuBinary],
    batch: dict[tuple[str, str], Outcome],
    facts: HostFacts,
) -> None:
    if binary_index >= len(binaries):
        pytest.skip("fewer QEMU binaries than at collection time")
    _check(SCENARIOS[scenario_id], binaries[binary_index], batch, facts)


def test_precopy_with_guest_check(
    binaries: list[QemuBinary], batch: dict[tuple[str, str], Outcome], facts: HostFacts
) -> None:
    """A migration with a live guest whose memory is compared after it (when the executor can boot one)."""
    scenario = _with_guest(SCENARIOS[GUEST_CHECK])
    real = _check(scenario, binaries[0], batch, facts)
    if real.guest is None:
        pytest.skip("the executor recorded no guest check (guest support: harness/guest, requires = ['guest'])")
    assert real.guest.get("alive") and not real.guest.get("bad_pages"), real.guest
