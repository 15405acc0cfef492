"""The ``host`` VFIO provider: scenarios run on this machine with its real VFIO devices.

It has the interface of harness.vfio.provider's providers (``run_batch``, ``host_facts``), so the runner
hands it every VFIO scenario as one batch and runs the model with its host facts. Before any QEMU
starts it inspects every configured device (harness.vfio.host.inspect) and refuses to go on when one
cannot be used: a device or an IOMMU-group member bound to a non-VFIO driver is never rebound unless the
user said ``allow_rebind``, and then the original drivers are restored when the provider is closed.

A local migration runs the source and the destination on the same host at the same time, so a
scenario with N VFIO devices needs 2N configured devices of the wanted personality (e.g. two VFs of the
same PF); one with fewer is skipped with that reason before QEMU starts.
"""

from __future__ import annotations

import asyncio
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario
from harness.errors import VfioSetupError
from harness.results import RESOURCE_SKIP, SKIP_KIND
from harness.vfio.features import kernel_dirty_report_works
from harness.vfio.host import HostDeviceAllocator, HostVfioDevice, inspect
from harness.vfio.rebind import DriverRebinder
from harness.vfio.sysfs import ROOTS, SysfsRoots

if TYPE_CHECKING:
    from harness.binaries import QemuBinary
    from harness.vfio.allocator import VfioDeviceAllocator

PROVIDER_NAME = "host"
DEFAULT_PERSONALITY = "migratable"


class HostDeviceRefused(VfioSetupError):
    """A configured device cannot be used as it is; the message says what to change."""


def device_summary(dev: HostVfioDevice) -> dict[str, Any]:
    """The facts recorded into every outcome's ``extra["host_devices"]``."""
    return {
        "kind": dev.kind,
        "driver": dev.driver,
        "vendor": dev.vendor,
        "device": dev.device,
        "iommu_group": dev.iommu_group,
        "kernel": dev.kernel,
        "migration_flags": dev.features.flags,
        "flag_names": dev.features.flag_names,
        "dma_logging": dev.features.dma_logging,
        "personality": dev.features.personality,
    }


def devices_needed(scenario: Scenario) -> Counter[str]:
    """Personality -> how many host devices the scenario holds at once (source and destination)."""
    need: Counter[str] = Counter()
    for spec in (scenario.source, scenario.destination):
        for device in spec.vfio_devices:
            need[device.personality or DEFAULT_PERSONALITY] += 1
    return need


def shortage(scenario: Scenario, devices: Sequence[HostVfioDevice]) -> str | None:
    """Why the configured devices cannot cover the scenario (the skip reason), or None."""
    have = Counter(d.features.personality for d in devices if d.usable)
    missing = []
    for personality, count in sorted(devices_needed(scenario).items()):
        if have[personality] < count:
            missing.append(f"{count} x {personality!r} (configured: {have[personality]})")
    if not missing:
        return None
    offered = ", ".join(f"{d.vbasedev_name}={d.features.personality}" for d in devices) or "none"
    return (
        f"needs {', '.join(missing)} VFIO devices: source and destination hold their devices at once on this "
        f"host; configured devices: {offered}"
    )


class HostProvider:
    """Runs VFIO scenarios locally through harness.executor with the configured host devices."""

    name = PROVIDER_NAME

    def __init__(
        self,
        names: Sequence[str],
        *,
        allow_rebind: bool = False,
        dirty_report_works: bool | None = None,
        timeout: float = 60.0,
        roots: SysfsRoots = ROOTS,
        allocator_factory: Any = None,
        kernel: str | None = None,
        inspector: Callable[..., HostVfioDevice] = inspect,
    ) -> None:
        if not names:
            raise HostDeviceRefused(
                "no VFIO device configured: pass --vfio-device 0000:3b:00.1 (repeatable) or set "
                "MIGCONFORM_VFIO_DEVICES=0000:3b:00.1,0000:3b:00.2"
            )
        self.names = list(names)
        self.allow_rebind = allow_rebind
        self.timeout = timeout
        self.roots = roots
        self.kernel = kernel or platform.release()
        self._dirty_report_works = dirty_report_works
        # The lab wraps the allocator (it recreates an mdev after every launch, as a reset would).
        self._allocator_factory = allocator_factory
        self.rebinder = DriverRebinder(roots)
        self._inspect = inspector  # unit tests on a fake sysfs tree replace the ioctl query
        self.devices: list[HostVfioDevice] | None = None

    # ---- before any QEMU ---------------------------------------------------------------------------
    def prepare(self) -> list[HostVfioDevice]:
        """Inspects every device (once); raises HostDeviceRefused when one is not usable."""
        if self.devices is not None:
            return self.devices
        devices = [self._inspect(name, roots=self.roots, kernel=self.kernel) for name in self.names]
        if self.allow_rebind:
            moved = False
            for dev in devices:
                if dev.exists and dev.iommu_group is not None and dev.kind == "pci":
                    moved = bool(self.rebinder.prepare(dev)) or moved
            if moved:
                devices = [self._inspect(name, roots=self.roots, kernel=self.kernel) for name in self.names]
        unusable = [d for d in devices if not d.usable]
        if unusable:
            self.rebinder.restore()
            details = "; ".join(f"{d.name}: {' / '.join(d.problems)}" for d in unusable)
            raise HostDeviceRefused(f"refusing to run with unusable VFIO device(s), nothing was started: {details}")
        self.devices = devices
        return devices

    def close(self) -> None:
        """Gives rebound devices back to their original drivers."""
        self.rebinder.restore()

    def allocator(self) -> VfioDeviceAllocator:
        devices = self.prepare()
        if self._allocator_factory is not None:
            made: VfioDeviceAllocator = self._allocator_factory(devices)
            return made
        return HostDeviceAllocator(devices)

    # ---- the provider interface --------------------------------------------------------------------
    def host_facts(self) -> HostFacts:
        from harness.probe import probe_host

        host = probe_host()
        works = self._dirty_report_works
        if works is None:
            # Unknown configuration: assume a kernel that reports (HostFacts' default); say so with
            # dirty-report=fails when the host's vfio.ko lacks iova_bitmap.
            works = kernel_dirty_report_works(self.kernel) is not False
        return HostFacts(
            userfaultfd=host.userfaultfd,
            uffd_wp=host.uffd_wp,
            kvm=host.kvm_device and not host.pvm,
            vfio_dirty_report_works=bool(works),
            kernel=self.kernel,
        )

    async def run_batch(self, scenarios: Sequence[Scenario], binaries: Sequence[QemuBinary]) -> list[Outcome]:
        """Every scenario on every binary, one at a time (the devices are shared by all of them)."""
        from harness.executor import execute

        devices = self.prepare()
        allocator = self.allocator()
        facts = {d.vbasedev_name: device_summary(d) for d in devices}
        outcomes = []
        for binary in binaries:
            for scenario in scenarios:
                reason = shortage(scenario, devices)
                if reason is not None:
                    outcome = Outcome(
                        scenario=scenario.id,
                        backend="qemu",
                        qemu_version=str(binary.version),
                        verdict="skipped",
                        skip_reason=reason,
                        binary=str(binary.path),
                        # Known before any QEMU starts: the configured devices cannot cover it.
                        extra={SKIP_KIND: RESOURCE_SKIP},
                    )
                else:
                    started = time.monotonic()
                    workdir = Path(tempfile.mkdtemp(prefix=f"mc-host-{scenario.id}-"))
                    try:
                        outcome = await asyncio.wait_for(
                            execute(scenario, binary, workdir=workdir, allocator=allocator, timeout=self.timeout),
                            self.timeout * 3 + 30,
                        )
                    finally:
                        shutil.rmtree(workdir, ignore_errors=True)
                    if outcome.duration_s is None:
                        outcome.duration_s = round(time.monotonic() - started, 3)
                outcome.kernel = self.kernel
                outcome.vfio_provider = PROVIDER_NAME
                used = set(dict(outcome.extra.get("vfio_names") or {}).values())
                used |= set(dict(outcome.extra.get("vfio_names_destination") or {}).values())
                outcome.extra["host_devices"] = {k: v for k, v in facts.items() if k in used or not used}
                outcomes.append(outcome)
        return outcomes


def get_host_provider(options: Mapping[str, Any] | None = None) -> HostProvider:
    """``--vfio-provider host``: devices from the ``device`` option (comma separated) and the environment.

    Options: ``device``, ``allow-rebind`` (true/false), ``dirty-report`` (works/fails; default: read from
    the kernel's configuration), ``timeout`` (seconds per wait).
    """
    from harness.vfio.host import configured_devices

    opts = dict(options or {})
    raw = str(opts.pop("device", ""))
    names = configured_devices([n for n in raw.replace(" ", ",").split(",") if n])
    allow = str(opts.pop("allow-rebind", "false")).lower() in ("1", "true", "yes", "on")
    dirty = opts.pop("dirty-report", None)
    timeout = float(opts.pop("timeout", 60.0))
    if opts:
        raise ValueError(f"unknown option(s) for provider host: {', '.join(sorted(opts))}")
    if dirty not in (None, "works", "fails"):
        raise ValueError(f"dirty-report must be works or fails, not {dirty!r}")
    return HostProvider(
        names,
        allow_rebind=allow,
        dirty_report_works=None if dirty is None else dirty == "works",
        timeout=timeout,
    )
