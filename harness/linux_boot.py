"""Whether KVM boots the guest image's Linux kernel to its init: one bounded boot, its answer kept on disk.

A KVM that runs a firmware-only VM may still fail to boot Linux (some PVM hosts), and on such a host the
boot costs the whole bound, so the answer is kept per binary, host boot, guest image and CPU model
(:func:`linux_boot_record`). :func:`probe_linux_boot` is the cached entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.binaries import QemuBinary
from harness.errors import MigconformError, QemuLaunchError
from harness.machine import QemuMachine, private_dir
from harness.probe import PROBE_LAUNCH_TIMEOUT_S, LinuxBootProbe, binary_key, probe_binary, run_in_thread
from harness.settings import cache_root

# The Linux boot probe: the guest image's /init prints this line once the kernel has handed over to userspace
# (images/guest/init). A KVM that boots Linux gets there in about a second; the bound only has to be far above
# that, since missing it costs nothing worse than TCG for guest VMs.
LINUX_BOOT_MARKER = b"migconform guest up"
LINUX_BOOT_BOUND_S = 8.0
LINUX_BOOT_MEMORY = "128M"
CONSOLE_TAIL_BYTES = 4000  # enough for a kernel panic's header and its stack trace
# Bump when the probe's method changes, so answers kept on disk by an older method are not reused.
LINUX_BOOT_METHOD = 1


async def boot_to_init(
    binary: QemuBinary, kernel: Path, initrd: Path, cmdline: str, accel_args: Sequence[str], bound: float
) -> tuple[bool, str, str]:
    """Boot ``kernel`` with ``accel_args`` and watch the serial console for :data:`LINUX_BOOT_MARKER`, at most
    ``bound`` seconds after the vCPUs start. Returns (reached init, what happened, the console's tail).

    The VM starts paused (-S) so that the bound covers the guest, not QEMU's start-up; -no-reboot turns a
    guest panic (panic=-1) into QEMU's exit, which is noticed at once."""
    workdir = private_dir("migconform-linuxprobe-")
    console = workdir / "console.log"
    args = [
        "-machine", "q35", *accel_args, "-m", LINUX_BOOT_MEMORY, "-S", "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
    ]  # fmt: skip
    vm = QemuMachine(binary, args, name="probe-linux", sock_dir=workdir, launch_timeout=PROBE_LAUNCH_TIMEOUT_S)
    try:
        try:
            await vm.launch()
        except QemuLaunchError as exc:
            return False, f"QEMU did not start: {exc.message or exc.exit_status}", ""
        reached, what = False, ""
        try:
            await vm.qmp("cont")
            started = time.monotonic()
            while True:
                if console.exists() and LINUX_BOOT_MARKER in console.read_bytes():
                    reached, what = True, f"the kernel reached its init in {time.monotonic() - started:.1f} s"
                    break
                if not vm.is_alive:
                    what = f"QEMU ended before the kernel reached its init: {vm.died()}"
                    break
                if time.monotonic() - started > bound:
                    what = f"the kernel did not reach its init within {bound:g} s"
                    break
                await asyncio.sleep(0.05)
        except MigconformError as exc:
            what = f"the boot failed: {exc}"
        finally:
            await vm.shutdown()
        tail = console.read_bytes()[-CONSOLE_TAIL_BYTES:].decode(errors="replace") if console.exists() else ""
        return reached, what, tail
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _boot_id() -> str:
    """Changes with every boot of the host (and so with every new machine): answers kept on disk are per boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return platform.node()


def _disk_key(binary: QemuBinary, cpu: str, image_digest: str) -> str:
    try:
        st = os.stat(binary.realpath)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "?"
    parts = [
        LINUX_BOOT_METHOD, binary.realpath, stamp, sorted(binary.env.items()), list(binary.extra_args),
        platform.release(), _boot_id(), cpu, image_digest, LINUX_BOOT_BOUND_S,
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def linux_boot_record() -> Path:
    """Where Linux-boot answers are kept: delete it to probe again."""
    return cache_root() / "probes" / "linux-boot.json"


def _read_record(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def probe_uncached(binary: QemuBinary) -> LinuxBootProbe:
    kvm = probe_binary(binary).kvm
    if not kvm.usable or kvm.cpu is None:
        return LinuxBootProbe(False, f"KVM is not usable: {kvm.reason}")
    from harness.guest.image import GuestImageError, build_image

    try:
        image = build_image()
    except (GuestImageError, OSError) as exc:
        return LinuxBootProbe(None, f"not probed: the guest image cannot be built: {exc}", kvm.cpu)
    record = linux_boot_record()
    disk_key = _disk_key(binary, kvm.cpu, image.digest)
    with contextlib.suppress(OSError):
        record.parent.mkdir(parents=True, exist_ok=True)
    # One boot per host at a time: other processes (pytest workers) wait here, then read the answer.
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):
            lock = stack.enter_context(record.with_suffix(".lock").open("w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        saved = _read_record(record).get(disk_key)
        if isinstance(saved, dict) and isinstance(saved.get("boots"), bool):
            return LinuxBootProbe(
                saved["boots"], str(saved.get("detail", "")), kvm.cpu, str(saved.get("console", "")),
                float(saved.get("seconds", 0.0)), from_disk=True,
            )  # fmt: skip
        started = time.monotonic()
        accel_args = ["-accel", "kvm", "-cpu", kvm.cpu]
        reached, what, tail = run_in_thread(
            boot_to_init(binary, image.kernel, image.initrd, image.cmdline, accel_args, LINUX_BOOT_BOUND_S)
        )
        seconds = round(time.monotonic() - started, 2)
        detail = f"{'yes' if reached else 'no'}: with -cpu {kvm.cpu}, {what} ({image.kernel_package})"
        result = LinuxBootProbe(reached, detail, kvm.cpu, tail, seconds)
        data = _read_record(record)
        data[disk_key] = {"boots": reached, "detail": detail, "console": tail, "seconds": seconds}
        data[disk_key]["binary"] = binary.path
        with contextlib.suppress(OSError):
            tmp = record.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, record)
        return result


# ---------------------------------------------------------------------------------------------- Linux boot


_linux_cache: dict[tuple[Any, ...], LinuxBootProbe] = {}
_linux_lock = threading.Lock()


def probe_linux_boot(binary: QemuBinary) -> LinuxBootProbe:
    """Whether KVM boots the guest image's kernel (harness.guest.image) to its init with the CPU model
    :func:`probe_binary` found, from one bounded boot (:data:`LINUX_BOOT_BOUND_S`).

    Cached per binary for the process and on disk (:func:`linux_boot_record`) per binary,
    host boot, guest image and CPU model. May take the whole bound the first time: call it from a thread in
    async code. Raises :class:`HostEnvironmentError` as :func:`probe_binary` does."""
    key = binary_key(binary)
    with _linux_lock:
        cached = _linux_cache.get(key)
        if cached is None:
            cached = probe_uncached(binary)
            _linux_cache[key] = cached
        return cached
