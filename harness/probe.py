"""What this host and each QEMU binary can really do: probed, never assumed.

The model predicts from explicit host facts (reference_impl.host.HostFacts) and the executor skips a
scenario whose ``requires`` the host cannot meet, so both need the truth about *this* machine:

- per host: userfaultfd (syscall, and /dev/userfaultfd, which QEMU 10 tries first and 7.2 never uses),
  UFFD write-protect (UFFDIO_API's feature word, what QEMU's background-snapshot check reads), KVM
  (/dev/kvm and whether it is PVM, the paravirtual KVM that cannot boot a stock Linux guest);
- per binary: version, migration capabilities, device types (qom-list-types), vfio-pci's properties, and
  whether KVM runs a paused/firmware-only VM (the executor's VMs have no guest OS) and with which -cpu.

Results are cached per binary (path + environment + arguments) for the life of the process; a probe
launches at most three short QEMUs.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import platform
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.binaries import QemuBinary
from harness.errors import MigconformError, QemuLaunchError
from harness.machine import QemuMachine
from reference_impl.host import HostFacts

T = TypeVar("T")

# -cpu models tried under KVM, in order. "host" is what a KVM user expects; on this machine's PVM KVM it
# aborts ("failed to set MSR 0x10a": the IA32_ARCH_CAPABILITIES MSR), and "host,-arch-capabilities" works.
KVM_CPU_CANDIDATES = ("host", "host,-arch-capabilities")
KVM_RUN_CHECK_S = 0.3
PROBE_LAUNCH_TIMEOUT_S = 20.0

# Linux uapi (include/uapi/linux/userfaultfd.h), x86_64
SYS_USERFAULTFD = 323
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0x00) on /dev/userfaultfd
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_USER_MODE_ONLY = 1
O_CLOEXEC = os.O_CLOEXEC
O_NONBLOCK = os.O_NONBLOCK


class _UffdioApi(ctypes.Structure):
    _fields_ = (("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64))


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


@dataclass(frozen=True)
class KvmProbe:
    """Whether KVM runs this binary's firmware-only VM, with which -cpu, and whether it can boot Linux."""

    usable: bool
    cpu: str | None
    reason: str
    # None = not probed (no kernel image was given); False when known impossible (PVM host).
    boots_linux: bool | None
    boots_linux_detail: str
    attempts: tuple[tuple[str, str], ...] = ()  # (-cpu, result)


@dataclass(frozen=True)
class BinaryProbe:
    binary: QemuBinary
    capabilities: tuple[str, ...]
    device_types: frozenset[str]
    vfio_pci_properties: tuple[str, ...]
    kvm: KvmProbe
    error: str | None = None  # the probe VM itself failed (then the lists are empty)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def has_device(self, driver: str) -> bool:
        return driver in self.device_types


# ---------------------------------------------------------------------------------------------- host


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _uffd_features(fd: int) -> tuple[int | None, str]:
    """UFFDIO_API with no requested features: the kernel answers with every feature it supports."""
    api = _UffdioApi(UFFD_API, 0, 0)
    libc = _libc()
    if libc.ioctl(fd, ctypes.c_ulong(UFFDIO_API), ctypes.byref(api)) != 0:
        err = ctypes.get_errno()
        return None, f"UFFDIO_API failed: {os.strerror(err)}"
    return int(api.features), ""


def _open_uffd_syscall() -> tuple[int | None, str]:
    libc = _libc()
    fd = libc.syscall(SYS_USERFAULTFD, O_CLOEXEC | O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        hint = " (vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE?)" if err == errno.EPERM else ""
        return None, f"userfaultfd syscall: {os.strerror(err)}{hint}"
    return int(fd), ""


def _open_uffd_dev() -> tuple[int | None, str]:
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | O_CLOEXEC)
    except OSError as exc:
        return None, f"/dev/userfaultfd: {exc.strerror}"
    try:
        fd = _libc().ioctl(dev, ctypes.c_ulong(USERFAULTFD_IOC_NEW), O_CLOEXEC | O_NONBLOCK)
        if fd < 0:
            return None, f"/dev/userfaultfd USERFAULTFD_IOC_NEW: {os.strerror(ctypes.get_errno())}"
        return int(fd), ""
    finally:
        os.close(dev)


_host_lock = threading.Lock()
_host_cache: HostProbe | None = None


def probe_host() -> HostProbe:
    """This host's userfaultfd, UFFD-WP and KVM facts (cached)."""
    global _host_cache
    with _host_lock:
        if _host_cache is not None:
            return _host_cache
        syscall_fd, syscall_err = _open_uffd_syscall()
        dev_fd, dev_err = _open_uffd_dev()
        features: int | None = None
        feature_err = "no userfaultfd to ask"
        for fd in (syscall_fd, dev_fd):
            if fd is not None:
                if features is None:
                    features, feature_err = _uffd_features(fd)
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
            kvm_detail = "/dev/kvm is PVM (kvm_pvm): paravirtual KVM, runs firmware but not a stock Linux guest"
        else:
            kvm_detail = "/dev/kvm present"
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
        )
        return _host_cache


# ---------------------------------------------------------------------------------------------- binary


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
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
) -> tuple[tuple[str, ...], frozenset[str], tuple[str, ...], str | None]:
    args = ["-machine", "q35", "-accel", "tcg", "-m", "64M", "-S"]
    try:
        async with QemuMachine(binary, args, name="probe", launch_timeout=launch_timeout) as vm:
            caps = tuple(str(c["capability"]) for c in await vm.qmp("query-migrate-capabilities"))
            types = frozenset(str(t["name"]) for t in await vm.qmp("qom-list-types", abstract=False))
            vfio_props: tuple[str, ...] = ()
            if "vfio-pci" in types:
                props = await vm.qmp("device-list-properties", typename="vfio-pci")
                vfio_props = tuple(sorted(str(p["name"]) for p in props))
            return caps, types, vfio_props, None
    except MigconformError as exc:
        return (), frozenset(), (), str(exc)


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


async def _probe_kvm(binary: QemuBinary, host: HostProbe, launch_timeout: float) -> KvmProbe:
    if host.pvm:
        linux, linux_detail = False, "PVM KVM cannot boot a stock Linux guest (vfio-mtty-lab.md §6): not attempted"
    else:
        linux, linux_detail = None, "not probed (needs a kernel image)"
    if not host.kvm_device:
        return KvmProbe(False, None, host.kvm_detail, False, "no usable /dev/kvm")
    attempts: list[tuple[str, str]] = []
    for cpu in KVM_CPU_CANDIDATES:
        result = await _kvm_runs(binary, cpu, launch_timeout)
        attempts.append((cpu, result))
        if result == "ok":
            reason = f"runs a firmware-only VM with -cpu {cpu}"
            if host.pvm:
                reason += " (PVM)"
            return KvmProbe(True, cpu, reason, linux, linux_detail, tuple(attempts))
    why = "; ".join(f"-cpu {cpu}: {result}" for cpu, result in attempts)
    return KvmProbe(False, None, f"KVM cannot run a firmware-only VM: {why}", False, linux_detail, tuple(attempts))


async def _probe(binary: QemuBinary, launch_timeout: float) -> BinaryProbe:
    started = time.monotonic()
    host = probe_host()
    (caps, types, vfio_props, error), kvm = await asyncio.gather(
        _probe_tcg(binary, launch_timeout), _probe_kvm(binary, host, launch_timeout)
    )
    return BinaryProbe(binary, caps, types, vfio_props, kvm, error, round(time.monotonic() - started, 3))


_binary_locks: dict[tuple[Any, ...], threading.Lock] = {}
_binary_cache: dict[tuple[Any, ...], BinaryProbe] = {}
_cache_lock = threading.Lock()


def _key(binary: QemuBinary) -> tuple[Any, ...]:
    return (binary.realpath, tuple(sorted(binary.env.items())), binary.extra_args)


def probe_binary(binary: QemuBinary, launch_timeout: float = PROBE_LAUNCH_TIMEOUT_S) -> BinaryProbe:
    """Everything :mod:`harness.probe` knows about ``binary`` (cached; concurrent callers share one probe).

    ``launch_timeout`` bounds each probe QEMU's wait for QMP (the executor passes the run's --timeout when it
    is shorter, so a binary that never offers QMP costs a run that bound, not the default's)."""
    key = _key(binary)
    with _cache_lock:
        cached = _binary_cache.get(key)
        if cached is not None:
            return cached
        lock = _binary_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            cached = _binary_cache.get(key)
        if cached is not None:
            return cached
        result = _run_sync(_probe(binary, launch_timeout))
        with _cache_lock:
            _binary_cache[key] = result
        return result


def choose_accel(requested: str, probe: BinaryProbe, host: HostProbe) -> tuple[str | None, str]:
    """The accelerator a VM of the scenario runs with, or (None, why) when ``kvm`` is required but unusable.

    ``auto`` prefers TCG on a PVM host even though KVM runs our firmware-only VMs there. Measured on this
    machine (benchmarks/pair.py --accel both, n=10, median of launch + tcp precopy of a paused 256 MiB VM
    + teardown): QEMU 7.2.22 TCG 0.255 s vs KVM 0.382 s; QEMU 10.0.2 TCG 0.272 s vs KVM 0.291 s. A
    running SeaBIOS (our sources run, with no boot device) costs ~25 % of a core under PVM KVM against
    ~2 % under TCG, and QEMU's own migration qtest runs 4-5x slower there (qemu-mutant-build.md). The
    gating checks under test do not depend on the accelerator, so the faster, cheaper one wins; a
    scenario that needs KVM says ``accel = "kvm"`` or ``requires = ["kvm"]``.
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
        return "tcg", "auto: PVM KVM is slower than TCG for these VMs"
    return "tcg", f"auto: {probe.kvm.reason}"


def userfaultfd_for(binary: QemuBinary, host: HostProbe) -> bool:
    """Whether *this version* of QEMU can open a userfaultfd here: 10.0+ tries /dev/userfaultfd before the
    syscall, 7.2 only the syscall (fact sheet §1.3 rule c; versions in between are taken as 7.2)."""
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
        dirty_ring=False,  # never enabled by the executor (and broken on PVM: qemu-mutant-build.md)
        kernel=host.kernel,
    )


def format_qemus(binaries: Sequence[QemuBinary]) -> str:
    """A readable table of the binaries and what the probes found (``migconform qemus``)."""
    host = probe_host()
    lines = [
        f"host: Linux {host.kernel}",
        f"  userfaultfd: {'yes' if host.userfaultfd else 'no'} ({host.userfaultfd_detail})",
        f"  UFFD write-protect: {'yes' if host.uffd_wp else 'no'} ({host.uffd_wp_detail})",
        f"  KVM: {host.kvm_detail}",
        "",
    ]
    if not binaries:
        lines.append("no QEMU binaries found: set QEMU_BINARY, run scripts/setup.sh, or put qemu-system-x86_64 on PATH")
        return "\n".join(lines)
    rows = [("version", "path", "accel(auto)", "KVM", "caps", "vfio-pci")]
    details: list[str] = []
    for binary in binaries:
        probe = probe_binary(binary)
        auto, why = choose_accel("auto", probe, host)
        kvm = f"yes, -cpu {probe.kvm.cpu}" if probe.kvm.usable else "no"
        vfio = "no"
        if probe.has_device("vfio-pci"):
            migration_prop = next(
                (p for p in ("enable-migration", "x-enable-migration") if p in probe.vfio_pci_properties), "?"
            )
            vfio = f"yes ({migration_prop})"
        caps = str(len(probe.capabilities)) if probe.error is None else "probe failed"
        rows.append((str(binary.version), binary.path, auto or "-", kvm, caps, vfio))
        details.append(f"{binary.label}")
        if binary.env or binary.extra_args:
            env = " ".join(f"{k}={v}" for k, v in binary.env.items())
            details.append(f"  runs with: {env} {' '.join(binary.extra_args)}".rstrip())
        details.append(f"  accel auto -> {auto}: {why}")
        details.append(f"  KVM: {probe.kvm.reason}")
        for cpu, result in probe.kvm.attempts:
            details.append(f"    -cpu {cpu}: {result}")
        details.append(f"  boots Linux under KVM: {probe.kvm.boots_linux_detail}")
        if probe.error:
            details.append(f"  probe failed: {probe.error}")
        else:
            details.append(f"  migration capabilities: {', '.join(probe.capabilities)}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    lines.append("")
    lines.extend(details)
    return "\n".join(lines)
