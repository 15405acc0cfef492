"""Everything decided about a scenario before any QEMU of it starts: :func:`preflight` returns a :class:`Plan`.

Skipped (docs/scenario-format.md, "How a scenario is executed") is only what is known here and is about what
this host offers, so the whole decision is made before the source launches: once a QEMU ran, a missing
resource is an error of the item, never a skip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from contract.guest import GuestSpec
from contract.guest_rules import effective_guest
from contract.scenario import Scenario, VmSpec
from harness.binaries import QemuBinary
from harness.errors import ResourceUnavailable
from harness.features import Need, lacking, scenario_needs
from harness.guest.image import GuestImage, GuestImageError, build_image
from harness.linux_boot import probe_linux_boot
from harness.probe import (
    PROBE_LAUNCH_TIMEOUT_S,
    BinaryProbe,
    HostProbe,
    LinuxBootProbe,
    choose_accel,
    kvm_cpu_with,
    probe_binary,
    probe_host,
    userfaultfd_for,
)
from harness.results import HOST_SKIP, RESOURCE_SKIP
from harness.vfio.allocator import VfioDeviceAllocator

NO_VFIO_PROVIDER = "no VFIO provider: run with --vfio-provider mtty or --vfio-device BDF"
SIDES = ("source", "destination")


@dataclass(frozen=True)
class Plan:
    """What a run will do, fixed before any QEMU starts.

    ``argv`` is each side's QEMU arguments after the driver's own (:func:`vm_args`); the structured devices and
    the guest's arguments are added at launch, because VFIO host devices are allocated per launch.
    ``skip_reason`` set means no QEMU starts at all; ``skip_kind`` is then harness.results' HOST_SKIP or
    RESOURCE_SKIP.
    """

    kernel: str
    accels: tuple[str, str]
    cpus: tuple[str | None, str | None]
    argv: dict[str, list[str]]
    guest: tuple[GuestSpec, GuestImage] | None
    vfio_sides: tuple[str, ...]
    skip_reason: str | None
    skip_kind: str

    @property
    def accel(self) -> str:
        """Outcome.accel: one name when both sides agree, else "source/destination"."""
        source, destination = self.accels
        return source if source == destination else f"{source}/{destination}"


def vm_args(spec: VmSpec, accel: str, cpu: str | None) -> list[str]:
    """The argv of one VM after the driver's own options: [vm] machine, memory, accel (+cpu),
    only-migratable, the scenario's ``args`` verbatim, then the structured devices (added by the caller).
    Under KVM a [vm] cpu of model "host" runs as the probed KVM model (``cpu``; harness.probe.kvm_cpu_with)."""
    args = ["-machine", spec.machine, "-m", spec.memory, "-accel", accel]
    use_cpu = spec.cpu if spec.cpu is not None else cpu
    if spec.cpu is not None and accel == "kvm":
        use_cpu = kvm_cpu_with(spec.cpu, cpu)
    if use_cpu:
        args += ["-cpu", use_cpu]
    if spec.only_migratable:
        args.append("-only-migratable")
    args += list(spec.args)
    return args


def guest_accel(
    spec: VmSpec,
    probe: BinaryProbe,
    host: HostProbe,
    linux_boot: Callable[[QemuBinary], LinuxBootProbe] = probe_linux_boot,
) -> tuple[str, str | None]:
    """Accelerator and CPU model for a VM that boots the guest image: KVM (with the probe's -cpu) only where
    harness.probe booted the guest image's kernel to its init under KVM (``linux_boot``), else TCG with
    ``-cpu max`` (the features TCG emulates; both QEMU versions accept it). Not probed is not yes: a KVM that
    cannot boot Linux would hang the guest until the boot timeout. An explicit [vm] accel wins.

    Blocking: the first call on a host may boot a VM for up to harness.linux_boot.LINUX_BOOT_BOUND_S; call it from a
    thread. ``host`` is not consulted (whatever the host's KVM is, the boot probe says what it does)."""
    del host
    if spec.accel != "auto":
        return spec.accel, None
    if not probe.kvm.usable or probe.kvm.cpu is None:
        return "tcg", "max"
    if linux_boot(probe.binary).boots is True:
        return "kvm", probe.kvm.cpu
    return "tcg", "max"


def unmet_requirement(
    scenario: Scenario, probe: BinaryProbe, host: HostProbe, allocator: VfioDeviceAllocator | None
) -> str | None:
    """Why the scenario cannot run here (the skip reason), or None: a ``requires`` the host does not meet, an
    optional feature this QEMU build lacks (harness.features: "this QEMU has no spicevmc chardev ..."), or no
    VFIO provider."""
    uffd = userfaultfd_for(probe.binary, host)
    for need in scenario.requires:
        if need == "kvm" and not probe.kvm.usable:
            return f"requires KVM: {probe.kvm.reason}"
        if need == "kvm-invtsc" and not (probe.kvm.usable and probe.kvm.invtsc):
            return f"requires KVM keeping invtsc: {probe.kvm.invtsc_detail}"
        if need == "kvm-no-hyperv" and host.kvm_hyperv is not False:
            return f"requires a KVM without Hyper-V: {host.kvm_hyperv_detail}"
        if need == "uffd" and not uffd:
            return f"requires userfaultfd (as QEMU {probe.binary.version} opens it): {host.userfaultfd_detail}"
        if need == "uffd-wp" and not (uffd and host.uffd_wp):
            return f"requires UFFD write-protect: {host.uffd_wp_detail}"
        if need == "vfio" and allocator is None:
            return NO_VFIO_PROVIDER
    if probe.offered is not None:
        missing = lacking(scenario_needs(scenario), probe.offered, probe.binary.version)
        if missing is not None:
            return missing.missing_text()
    if allocator is None and (scenario.source.vfio_devices or scenario.destination.vfio_devices):
        return NO_VFIO_PROVIDER
    return None


async def preflight(
    scenario: Scenario,
    binary: QemuBinary,
    allocator: VfioDeviceAllocator | None,
    timeout: float,
    destination_binary: QemuBinary | None = None,
) -> Plan:
    """Probe the binary and the host, build the guest image the scenario needs, and choose each side's
    accelerator. Starts no QEMU of the scenario (the probes may boot their own, cached per binary).
    A cross-version item (``destination_binary``) probes each binary on its own: the CPU model KVM takes
    (and whether KVM works at all) is a property of the binary, not of the host.

    Raises :class:`ResourceUnavailable` for a guest image that cannot be built: a guest the scenario needs and
    the run could not build is an error of the item, never a skip."""
    bound = min(timeout, PROBE_LAUNCH_TIMEOUT_S)
    probe, host = await asyncio.gather(asyncio.to_thread(probe_binary, binary, bound), asyncio.to_thread(probe_host))
    probes = (probe, probe)
    if destination_binary is not None:
        probes = (probe, await asyncio.to_thread(probe_binary, destination_binary, bound))
    reason = unmet_requirement(scenario, probe, host, allocator)
    if reason is None and probes[1] is not probe:
        reason = unmet_requirement(scenario, probes[1], host, allocator)
    kind = RESOURCE_SKIP if reason == NO_VFIO_PROVIDER else HOST_SKIP
    guest_spec = effective_guest(scenario)
    guest: tuple[GuestSpec, GuestImage] | None = None
    if guest_spec is not None and reason is None:
        try:
            guest = (guest_spec, await asyncio.to_thread(build_image))
        except GuestImageError as exc:
            raise ResourceUnavailable("the guest image", str(exc)) from exc
    accels: list[str] = []
    cpus: list[str | None] = []
    for spec, side_probe in zip((scenario.source, scenario.destination), probes, strict=True):
        # A scenario that requires KVM means its VMs to run on it, even when auto would pick TCG here.
        requested = "kvm" if spec.accel == "auto" and "kvm" in scenario.requires else spec.accel
        if guest_spec is not None and requested == "auto":
            guest_accelerator, guest_cpu = await asyncio.to_thread(guest_accel, spec, side_probe, host)
            accels.append(guest_accelerator)
            cpus.append(guest_cpu)
            continue
        accel, why = choose_accel(requested, side_probe, host)
        if accel is None:
            reason = reason or why
        elif probe.offered is not None and not probe.offered.has(Need("accel", accel, "auto")):
            reason = reason or Need("accel", accel, f"[{SIDES[len(accels)]}] accel {requested}").missing_text()
        accels.append(accel or "tcg")
        cpus.append(side_probe.kvm.cpu if accel == "kvm" else None)
    specs = (scenario.source, scenario.destination)
    sides = tuple(zip(SIDES, specs, accels, cpus, strict=True))
    return Plan(
        kernel=host.kernel,
        accels=(accels[0], accels[1]),
        cpus=(cpus[0], cpus[1]),
        argv={side: vm_args(spec, accel, cpu) for side, spec, accel, cpu in sides},
        guest=guest,
        vfio_sides=tuple(side for side, spec, _, _ in sides if spec.vfio_devices),
        skip_reason=reason,
        skip_kind=kind,
    )
