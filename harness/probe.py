"""What this host and each QEMU binary can really do: probed, never assumed.

The model predicts from explicit host facts (contract.host.HostFacts) and the executor skips a
scenario whose ``requires`` the host cannot meet, so both need the truth about *this* machine, which
differs from the next one (docs/real-qemu-facts.md, "Probes"):

- per host: userfaultfd (syscall, and /dev/userfaultfd, which QEMU 10 tries first and 7.2 never uses),
  UFFD write-protect (UFFDIO_API's feature word, what QEMU's background-snapshot check reads), KVM
  (/dev/kvm, and whether it is PVM: the paravirtual KVM whose quirks made the CPU model a probe);
- per binary: version, migration capabilities, device types (qom-list-types), vfio-pci's properties,
  whether KVM runs a paused/firmware-only VM (the executor's VMs have no guest OS) and with which -cpu, and
  the optional features the build has (harness.features: chardev backends, netdevs, block drivers, RDMA);
- per binary, on demand (:func:`probe_linux_boot`): whether KVM boots the guest image's Linux kernel to
  its init, decided from what a bounded boot prints on the console.

A binary whose own probe fails (it crashes, exits, or never offers QMP) raises
:class:`harness.errors.HostEnvironmentError`: the binary cannot be tested here, which is not QEMU's answer
to a scenario. Results are cached per binary (path + environment + arguments) for the life of the process;
the Linux boot's answer is also kept on disk per binary, host boot and guest image, since on a KVM that
cannot boot Linux it costs the whole bound (harness.linux_boot boots; harness.uffd asks the kernel).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import platform
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from contract.host import HostFacts
from harness.binaries import QemuBinary
from harness.errors import HostEnvironmentError, MigconformError, QemuLaunchError
from harness.features.offered import Offered, parse_multifd_compression, probe_offered
from harness.machine import QemuMachine
from harness.uffd import UFFD_FEATURE_PAGEFAULT_FLAG_WP, open_uffd_dev, open_uffd_syscall, uffd_features

T = TypeVar("T")

# -cpu models tried under KVM, in order; the first that runs wins. "host" is what a KVM user expects; on some
# PVM KVM hosts it aborts ("failed to set MSR 0x10a": the IA32_ARCH_CAPABILITIES MSR), and then
# "host,-arch-capabilities" may work. Which one a host takes is only ever known from the attempts.
KVM_CPU_CANDIDATES = ("host", "host,-arch-capabilities")
KVM_RUN_CHECK_S = 0.3
PROBE_LAUNCH_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class HostProbe:
    """Facts about this host, independent of the QEMU binary."""

    kernel: str
    userfaultfd: bool
    userfaultfd_detail: str
    userfaultfd_syscall: bool
    userfaultfd_dev: bool
    uffd_wp: bool
    uffd_wp_detail: str
    kvm_device: bool
    kvm_detail: str
    pvm: bool
    # KVM_CAP_HYPERV (KVM_CHECK_EXTENSION on /dev/kvm): without it QEMU's hyperv_enabled() is false and no hv-*
    # flag reaches hyperv_init_vcpu (reference_impl.cpu). None: not asked (no usable /dev/kvm).
    kvm_hyperv: bool | None = None
    kvm_hyperv_detail: str = "not probed: no usable /dev/kvm"


@dataclass(frozen=True)
class KvmProbe:
    """Whether KVM runs this binary's firmware-only VM, and with which -cpu."""

    usable: bool
    cpu: str | None
    reason: str
    attempts: tuple[tuple[str, str], ...] = ()  # (-cpu, result), in KVM_CPU_CANDIDATES order
    # Whether KVM keeps the invtsc flag a vCPU asks for (:func:`invtsc_verdict`); None: not probed (no KVM).
    invtsc: bool | None = None
    invtsc_detail: str = "not probed: KVM is not usable"


@dataclass(frozen=True)
class LinuxBootProbe:
    """Whether KVM boots the guest image's Linux kernel to its init with the KVM probe's -cpu.

    ``boots`` is None when it was not probed (then ``detail`` starts with "not probed:" and says why), never
    a guess. ``console`` is the tail of what the guest printed, the evidence for the answer.
    """

    boots: bool | None
    detail: str
    cpu: str | None = None
    console: str = ""
    seconds: float = 0.0
    from_disk: bool = False


@dataclass(frozen=True)
class BinaryProbe:
    binary: QemuBinary
    capabilities: tuple[str, ...]
    device_types: frozenset[str]
    vfio_pci_properties: tuple[str, ...]
    kvm: KvmProbe
    error: str | None = None  # the probe VM itself failed: probe_binary raises HostEnvironmentError
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # The optional features it has (harness.features); None when not probed (the probe VM failed).
    offered: Offered | None = None

    def has_device(self, driver: str) -> bool:
        return driver in self.device_types


# ---------------------------------------------------------------------------------------------- host


_host_lock = threading.Lock()
_host_cache: HostProbe | None = None


def probe_host() -> HostProbe:
    """This host's userfaultfd, UFFD-WP and KVM facts (cached)."""
    global _host_cache
    with _host_lock:
        if _host_cache is not None:
            return _host_cache
        syscall_fd, syscall_err = open_uffd_syscall()
        dev_fd, dev_err = open_uffd_dev()
        features: int | None = None
        feature_err = "no userfaultfd to ask"
        for fd in (syscall_fd, dev_fd):
            if fd is not None:
                if features is None:
                    features, feature_err = uffd_features(fd)
                os.close(fd)
        uffd = syscall_fd is not None or dev_fd is not None
        uffd_detail = "; ".join(
            part
            for part in (
                "syscall ok" if syscall_fd is not None else syscall_err,
                "/dev/userfaultfd ok" if dev_fd is not None else dev_err,
            )
            if part
        )
        if features is None:
            wp, wp_detail = False, feature_err
        elif features & UFFD_FEATURE_PAGEFAULT_FLAG_WP:
            wp, wp_detail = True, f"UFFD_FEATURE_PAGEFAULT_FLAG_WP offered (features {features:#x})"
        else:
            wp, wp_detail = False, f"the kernel does not offer UFFD_FEATURE_PAGEFAULT_FLAG_WP (features {features:#x})"
        kvm_device = os.access("/dev/kvm", os.R_OK | os.W_OK)
        pvm = Path("/sys/module/kvm_pvm").is_dir()
        if not Path("/dev/kvm").exists():
            kvm_detail = "no /dev/kvm"
        elif not kvm_device:
            kvm_detail = "/dev/kvm is not readable and writable by this user"
        elif pvm:
            kvm_detail = "/dev/kvm is PVM (kvm_pvm): paravirtual KVM"
        else:
            kvm_detail = "/dev/kvm present"
        hyperv, hyperv_detail = kvm_hyperv() if kvm_device else (None, "not probed: no usable /dev/kvm")
        _host_cache = HostProbe(
            kernel=platform.release(),
            userfaultfd=uffd,
            userfaultfd_detail=uffd_detail,
            userfaultfd_syscall=syscall_fd is not None,
            userfaultfd_dev=dev_fd is not None,
            uffd_wp=wp,
            uffd_wp_detail=wp_detail,
            kvm_device=kvm_device,
            kvm_detail=kvm_detail,
            pvm=pvm,
            kvm_hyperv=hyperv,
            kvm_hyperv_detail=hyperv_detail,
        )
        return _host_cache


KVM_CHECK_EXTENSION = 0xAE03  # _IO(KVMIO, 0x03), linux/kvm.h
KVM_CAP_HYPERV = 44


def kvm_hyperv() -> tuple[bool | None, str]:
    """Whether this host's KVM offers Hyper-V enlightenments at all (KVM_CAP_HYPERV), with the evidence."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"not probed: /dev/kvm: {exc.strerror}"
    try:
        answer = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_HYPERV)
    except OSError as exc:
        return None, f"not probed: KVM_CHECK_EXTENSION: {exc.strerror}"
    finally:
        os.close(fd)
    return answer > 0, f"KVM_CHECK_EXTENSION(KVM_CAP_HYPERV) = {answer}"


# ---------------------------------------------------------------------------------------------- binary


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh thread with its own loop (callable from any context).

    The QEMUs it starts are ended before the thread exits, so PDEATHSIG (tied to the forking thread)
    never fires on a live one."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="migconform-probe")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


async def _probe_tcg(
    binary: QemuBinary, launch_timeout: float
) -> tuple[tuple[str, ...], frozenset[str], tuple[str, ...], frozenset[str] | None, str | None]:
    args = ["-machine", "q35", "-accel", "tcg", "-m", "64M", "-S"]
    try:
        async with QemuMachine(binary, args, name="probe", launch_timeout=launch_timeout) as vm:
            caps = tuple(str(c["capability"]) for c in await vm.qmp("query-migrate-capabilities"))
            types = frozenset(str(t["name"]) for t in await vm.qmp("qom-list-types", abstract=False))
            vfio_props: tuple[str, ...] = ()
            if "vfio-pci" in types:
                props = await vm.qmp("device-list-properties", typename="vfio-pci")
                vfio_props = tuple(sorted(str(p["name"]) for p in props))
            compression = parse_multifd_compression(await vm.qmp("query-qmp-schema"))
            return caps, types, vfio_props, compression, None
    except MigconformError as exc:
        return (), frozenset(), (), None, str(exc)


async def _kvm_runs(binary: QemuBinary, cpu: str, launch_timeout: float) -> str:
    """Whether ("ok") a paused firmware-only VM starts under KVM with ``cpu`` and keeps running after ``cont``;
    else what went wrong, in QEMU's words."""
    args = ["-machine", "q35", "-accel", "kvm", "-cpu", cpu, "-m", "64M", "-S"]
    vm = QemuMachine(binary, args, name="probe-kvm", launch_timeout=launch_timeout)
    try:
        await vm.launch()
    except QemuLaunchError as exc:
        return exc.message or f"exited with status {exc.exit_status}"
    try:
        await vm.qmp("cont")
        await asyncio.sleep(KVM_RUN_CHECK_S)
        if not vm.is_alive:
            return str(vm.died())
        state = await vm.runstate()
        return "ok" if state == "running" else f"runstate {state} after cont"
    except MigconformError as exc:
        return str(exc)
    finally:
        await vm.shutdown()


def invtsc_verdict(cpu: str, result: str) -> tuple[bool, str]:
    """Whether KVM keeps invtsc, from :func:`_kvm_runs`' answer for ``cpu`` (the KVM model, +invtsc,enforce).

    x86_cpu_filter_features (target/i386/cpu.c) drops a flag kvm_arch_get_supported_cpuid does not report,
    and ``enforce`` turns that drop into a refusal to start; so a VM that runs kept the flag, and any other
    answer (the refusal's text, or a VM that died) says it was not kept, with QEMU's words as the reason."""
    if result == "ok":
        return True, f"KVM keeps invtsc: a VM with -cpu {cpu} runs"
    return False, f"KVM does not keep invtsc: -cpu {cpu}: {result}"


def kvm_cpu_with(scenario_cpu: str, probed: str | None) -> str:
    """A scenario's ``cpu`` under KVM: its "host" model is replaced by the probed KVM model (``probed``, e.g.
    "host,-arch-capabilities"), its options kept after it, so a scenario says ``cpu = "host,+invtsc"`` and
    never names this host's workaround. Any other model, or no probed model, is passed as written."""
    model, sep, options = scenario_cpu.partition(",")
    if model != "host" or probed is None or not probed.startswith("host"):
        return scenario_cpu
    return probed + sep + options


async def _probe_kvm(binary: QemuBinary, host: HostProbe, launch_timeout: float) -> KvmProbe:
    if not host.kvm_device:
        return KvmProbe(False, None, host.kvm_detail)
    attempts: list[tuple[str, str]] = []
    for cpu in KVM_CPU_CANDIDATES:
        result = await _kvm_runs(binary, cpu, launch_timeout)
        attempts.append((cpu, result))
        if result == "ok":
            reason = f"runs a firmware-only VM with -cpu {cpu}"
            if host.pvm:
                reason += " (PVM)"
            invtsc_cpu = f"{cpu},+invtsc,enforce"
            invtsc, invtsc_detail = invtsc_verdict(invtsc_cpu, await _kvm_runs(binary, invtsc_cpu, launch_timeout))
            return KvmProbe(True, cpu, reason, tuple(attempts), invtsc, invtsc_detail)
    why = "; ".join(f"-cpu {cpu}: {result}" for cpu, result in attempts)
    return KvmProbe(False, None, f"KVM cannot run a firmware-only VM: {why}", tuple(attempts))


async def _probe(binary: QemuBinary, launch_timeout: float) -> BinaryProbe:
    started = time.monotonic()
    host = probe_host()
    (caps, types, vfio_props, compression, error), kvm = await asyncio.gather(
        _probe_tcg(binary, launch_timeout), _probe_kvm(binary, host, launch_timeout)
    )
    offered = None if error is not None else await asyncio.to_thread(probe_offered, binary, types, compression)
    seconds = round(time.monotonic() - started, 3)
    return BinaryProbe(binary, caps, types, vfio_props, kvm, error, seconds, offered=offered)


def _failed(probe: BinaryProbe) -> HostEnvironmentError:
    return HostEnvironmentError(
        f"probing QEMU binary {probe.binary.path}",
        f"a TCG VM with QMP (query-migrate-capabilities, qom-list-types) failed: {probe.error}",
    )


_binary_locks: dict[tuple[Any, ...], threading.Lock] = {}
_binary_cache: dict[tuple[Any, ...], BinaryProbe] = {}
_cache_lock = threading.Lock()


def binary_key(binary: QemuBinary) -> tuple[Any, ...]:
    """What makes two QemuBinary values the same binary for the probes' caches."""
    return (binary.realpath, tuple(sorted(binary.env.items())), binary.extra_args)


def probe_binary(binary: QemuBinary, launch_timeout: float = PROBE_LAUNCH_TIMEOUT_S) -> BinaryProbe:
    """Everything :mod:`harness.probe` knows about ``binary`` (cached; concurrent callers share one probe).

    ``launch_timeout`` bounds each probe QEMU's wait for QMP (the executor passes the run's --timeout when it
    is shorter, so a binary that never offers QMP costs a run that bound, not the default's).

    Raises :class:`HostEnvironmentError` when the binary cannot even run the probe's VM (it crashes, exits or
    never offers QMP): every scenario on it would fail the same way, and that is the host's problem, not a
    divergence. The failure is cached too, so a run does not pay the probe's timeout once per scenario."""
    key = binary_key(binary)
    with _cache_lock:
        cached = _binary_cache.get(key)
        lock = _binary_locks.setdefault(key, threading.Lock())
    if cached is None:
        with lock:
            with _cache_lock:
                cached = _binary_cache.get(key)
            if cached is None:
                cached = run_in_thread(_probe(binary, launch_timeout))
                with _cache_lock:
                    _binary_cache[key] = cached
    if cached.error is not None:
        raise _failed(cached)
    return cached


AUTO_PVM_POLICY = "auto: TCG on a PVM KVM host (a policy, not measured on this run: docs/real-qemu-facts.md, Probes)"


def choose_accel(requested: str, probe: BinaryProbe, host: HostProbe) -> tuple[str | None, str]:
    """The accelerator a VM of the scenario runs with, or (None, why) when ``kvm`` is required but unusable.

    ``auto`` takes KVM where the probe found it usable, except on a PVM host, where it takes TCG although KVM
    runs our firmware-only VMs there. That is a policy, documented with the one measurement behind it in
    docs/real-qemu-facts.md ("Probes"), and not re-measured per run: a timing taken on a shared, loaded host
    would flip between runs and change the model's host facts with it. The gating checks under test do not
    depend on the accelerator; a scenario that needs KVM says ``accel = "kvm"`` or ``requires = ["kvm"]``.
    """
    if requested == "tcg":
        return "tcg", "TCG requested"
    if requested == "kvm":
        if probe.kvm.usable:
            return "kvm", "KVM requested"
        return None, f"accel kvm requested but KVM is not usable: {probe.kvm.reason}"
    if probe.kvm.usable and not host.pvm:
        return "kvm", "auto: KVM runs firmware-only VMs here"
    if probe.kvm.usable:
        return "tcg", AUTO_PVM_POLICY
    return "tcg", f"auto: {probe.kvm.reason}"


def userfaultfd_for(binary: QemuBinary, host: HostProbe) -> bool:
    """Whether *this version* of QEMU can open a userfaultfd here: 10.0+ tries /dev/userfaultfd before the
    syscall, 7.2 only the syscall (QEMU's uffd_open(); versions in between are taken as 7.2)."""
    return host.userfaultfd_syscall or (binary.version.major >= 10 and host.userfaultfd_dev)


def host_facts(binary: QemuBinary, accel: str) -> HostFacts:
    """The model's host input for ``binary`` with VMs on ``accel`` (auto | kvm | tcg); userfaultfd as
    :func:`userfaultfd_for` says."""
    host = probe_host()
    probe = probe_binary(binary)
    # An outcome's accel is "kvm/tcg" when source and destination differ: the source's decides.
    resolved, _ = choose_accel(accel.split("/", 1)[0], probe, host)
    uffd = userfaultfd_for(binary, host)
    return HostFacts(
        userfaultfd=uffd,
        uffd_wp=host.uffd_wp and uffd,
        kvm=resolved == "kvm",
        kvm_invtsc=resolved == "kvm" and probe.kvm.invtsc is True,
        kvm_hyperv=host.kvm_hyperv if resolved == "kvm" else None,
        dirty_ring=False,  # never enabled by the executor
        kernel=host.kernel,
    )
