"""A resource the run should have had is an error, never a silent skip.

- The executor with a VFIO allocator: a device it cannot give BEFORE any QEMU starts is a skip (kind
  ``resource``); once the source QEMU runs, the same refusal is :class:`ResourceUnavailable`.
- The mtty lab's allocator: an exhausted mdev pool, or a type the lab build offers but the guest lacks, is
  :class:`ResourceUnavailable`; errors raised in the lab reach the host with their class.
- A guest image that cannot be built is :class:`ResourceUnavailable`.

The executor tests run the real QEMU binaries (the source starts for real); only the allocator is a fake
(it decides which launch gets a device) and, for the guest image, the image builder (so that nothing is
downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import DeviceSpec, Scenario
from harness import executor
from harness.binaries import QemuBinary, discover_binaries
from harness.errors import HostEnvironmentError, ResourceUnavailable
from harness.execution import preflight
from harness.guest.image import GuestImageError
from harness.loader import load_scenario
from harness.results import RESOURCE_SKIP, SKIP_KIND
from harness.runner import RunOptions, run_sync
from harness.suite import SUITE_DIR
from harness.targets import targets_for_binaries
from harness.vfio.allocator import AllocatedDevice, VfioUnavailable
from harness.vfio.provider import LabRunError, lab_item_error
from harness.vfio_lab.inside import LAB_ERROR_TYPE, _error_record
from harness.vfio_lab.mdev import MdevAllocator

SUITE = SUITE_DIR

BINARIES = discover_binaries()
needs_qemu = pytest.mark.skipif(not BINARIES, reason="no QEMU binary found (QEMU_BINARY, scripts/setup.sh, PATH)")


class _Refusing:
    """Refuses every device with VfioUnavailable and counts how often it was asked."""

    name = "refusing"

    def __init__(self) -> None:
        self.asked = 0

    def allocate(self, device: DeviceSpec) -> AllocatedDevice:
        self.asked += 1
        raise VfioUnavailable(f"no device with personality {device.personality!r} here")

    def release(self, device: AllocatedDevice) -> None:
        raise AssertionError("nothing was allocated")


def _scenario(tmp_path: Path, text: str, top: str = "") -> Scenario:
    path = tmp_path / "s.toml"
    path.write_text(top + '[vm]\nmemory = "64M"\n' + text)
    return load_scenario(path)


@needs_qemu
@pytest.mark.qemu
def test_device_refused_after_the_source_started_is_an_error(tmp_path: Path) -> None:
    """Only the destination has a VFIO device: its allocation comes after the source QEMU started."""
    scenario = _scenario(
        tmp_path,
        '[[destination.device]]\ndriver = "vfio-pci"\nid = "vfio0"\n[migration]\ntransport = "unix"\n',
    )
    allocator = _Refusing()
    with pytest.raises(ResourceUnavailable, match="no device with personality") as raised:
        executor.run_scenario(scenario, BINARIES[0], workdir=tmp_path / "w", allocator=allocator, timeout=20.0)
    assert allocator.asked == 1
    assert isinstance(raised.value, HostEnvironmentError)


@needs_qemu
@pytest.mark.qemu
def test_device_refused_before_anything_started_is_a_resource_skip(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, '[[vm.device]]\ndriver = "vfio-pci"\nid = "vfio0"\npersonality = "no-p2p"\n')
    outcome = executor.run_scenario(scenario, BINARIES[0], workdir=tmp_path / "w", allocator=_Refusing())
    assert outcome.verdict == "skipped"
    assert outcome.skip_reason == "no device with personality 'no-p2p' here"
    assert outcome.extra[SKIP_KIND] == RESOURCE_SKIP
    assert outcome.source is None and outcome.events is None


@needs_qemu
def test_guest_image_that_cannot_be_built_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build() -> object:
        raise GuestImageError("apt-get download linux-image-amd64 failed: no network")

    monkeypatch.setattr(preflight, "build_image", broken_build)
    scenario = _scenario(tmp_path, "", top='requires = ["guest"]\n')
    with pytest.raises(ResourceUnavailable, match="guest image: apt-get download"):
        executor.run_scenario(scenario, BINARIES[0], workdir=tmp_path / "w")


def _sysfs(tmp_path: Path, available: int) -> tuple[Path, Path]:
    bus, devices = tmp_path / "mdev_bus", tmp_path / "devices"
    types = bus / "mtty" / "mdev_supported_types" / "mtty-1"
    types.mkdir(parents=True)
    devices.mkdir()
    (types / "available_instances").write_text(f"{available}\n")
    (types / "create").write_text("")
    return bus, devices


def test_exhausted_mdev_pool_is_an_error(tmp_path: Path) -> None:
    bus, devices = _sysfs(tmp_path, available=0)
    allocator = MdevAllocator(["migratable"], mdev_bus=bus, mdev_devices=devices)
    with pytest.raises(ResourceUnavailable, match="mtty-1: no instances left"):
        allocator.allocate(DeviceSpec("vfio-pci", id="vfio0"))


def test_refused_mdev_create_is_an_error(tmp_path: Path) -> None:
    bus, devices = _sysfs(tmp_path, available=1)
    (bus / "mtty" / "mdev_supported_types" / "mtty-1" / "create").unlink()
    (bus / "mtty" / "mdev_supported_types" / "mtty-1" / "create").mkdir()  # writing a folder fails (EISDIR)
    allocator = MdevAllocator(["migratable"], mdev_bus=bus, mdev_devices=devices)
    with pytest.raises(ResourceUnavailable, match="creating an instance failed"):
        allocator.allocate(DeviceSpec("vfio-pci", id="vfio0"))


def test_personality_the_lab_does_not_offer_stays_a_skip_reason(tmp_path: Path) -> None:
    bus, devices = _sysfs(tmp_path, available=1)
    allocator = MdevAllocator(["migratable"], "built without mtty_nop2p", mdev_bus=bus, mdev_devices=devices)
    with pytest.raises(VfioUnavailable, match="built without mtty_nop2p"):
        allocator.allocate(DeviceSpec("vfio-pci", personality="no-p2p"))


def test_lab_errors_keep_their_class_on_the_host(tmp_path: Path) -> None:
    """inside.py records a host-environment error with its class; the provider rebuilds it, so the runner
    files the item as an environment error (not a skip, not a harness bug)."""
    scenario = _scenario(tmp_path, "")
    record = _error_record(scenario, "/usr/bin/qemu", "x", ResourceUnavailable("mdev type mtty-1", "no instances"))
    rebuilt = lab_item_error(str(record["lab_error"]), record[LAB_ERROR_TYPE])
    assert isinstance(rebuilt, ResourceUnavailable)
    assert str(rebuilt) == "mdev type mtty-1: no instances"
    plain = _error_record(scenario, "/usr/bin/qemu", "KeyError: 'x'", KeyError("x"))
    assert LAB_ERROR_TYPE not in plain
    assert type(lab_item_error(str(plain["lab_error"]), None)) is RuntimeError
    assert isinstance(LabRunError("did not boot"), ResourceUnavailable)


class _LabThatLostADevice:
    """A provider whose lab recorded, for its only scenario, the ResourceUnavailable the executor raised."""

    name = "fake-lab"

    def __init__(self) -> None:
        self.item_errors: dict[tuple[str, str], Exception] = {}

    async def run_batch(self, scenarios: Sequence[Scenario], binaries: Sequence[QemuBinary]) -> list[Outcome]:
        for scenario in scenarios:
            for binary in binaries:
                record = _error_record(
                    scenario, binary, "x", ResourceUnavailable("mdev type mtty-1", "no instances left")
                )
                key = (scenario.id, str(binary.path))
                self.item_errors[key] = lab_item_error(str(record["lab_error"]), record[LAB_ERROR_TYPE])
        return []

    def host_facts(self) -> HostFacts:
        return HostFacts()


@needs_qemu
def test_runner_reports_the_labs_own_error_for_the_item() -> None:
    """Not "returned no outcome", not a skip: the item is an error naming the resource the lab lost."""
    scenario = load_scenario(SUITE / "vfio-precopy-migratable.toml")
    options = RunOptions(backend="both", jobs=1, provider=_LabThatLostADevice())
    res = run_sync([scenario], targets_for_binaries(BINARIES[:1]), options)
    assert not res.skips and not res.comparisons
    (error,) = res.errors
    assert error.backend == "qemu"
    assert error.error == "harness.errors.ResourceUnavailable: mdev type mtty-1: no instances left"
    assert not res.passed
