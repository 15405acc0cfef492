"""Boots the lab's L1 guest with the host QEMU and waits, bounded, for its runner to finish.

The guest sees the host's root file system read-only over 9p (so the repository, its venv and the QEMU
binaries are at the same paths inside, via chroot) and one writable 9p share for the request and the
results. Its serial console goes to a log file; ``/init`` prints ``LAB:`` marker lines there, which give
the boot-to-runner time. The L1 QEMU runs in its own process group with PR_SET_PDEATHSIG, and is killed
on timeout, on cancellation and when the harness dies. An L1 that dies by a signal before its runner started is
booted once more (harness.vfio_lab.l1_abort says why, and when not).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import procutil, settings
from harness.errors import LabError
from harness.vfio_lab.build import REPO, LabImage, lab_cache
from harness.vfio_lab.l1_abort import FailedBoot, L1Aborted, abort_decision, abort_line

DEFAULT_QEMU = "/usr/bin/qemu-system-x86_64"
L1_MEMORY_MB = 2048
L1_CPUS = 2


class LabBootError(LabError):
    """The L1 guest did not get to (or through) its runner; the message points at the serial log."""


@dataclass
class AccelChoice:
    accel: str  # "kvm" | "tcg"
    reason: str
    cpu: str | None = None  # -cpu under KVM: harness.probe's model for the L1 QEMU ("host" when not probed)


@dataclass
class BootResult:
    returncode: int | None
    timed_out: bool
    serial_log: Path
    accel: AccelChoice
    runner_start_s: float | None  # host wall time from QEMU start to /init starting the runner
    runner_ready_s: float | None  # ... to the runner's Python being up (it wrote runner.json)
    total_s: float
    runner_exit: int | None  # the runner's exit status as /init saw it
    problems: list[str] = field(default_factory=list)  # "LAB:" failure markers from /init
    # Boots that died by a signal before the runner started (harness.vfio_lab.l1_abort); this result is the retry's.
    failed_boots: list[FailedBoot] = field(default_factory=list)


def _kept_folders() -> list[str]:
    folders = [REPO, settings.cache_root(), Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    unique: list[str] = []
    for folder in folders:
        text = str(folder)
        if text not in unique and not re.search(r"\s|:", text):
            unique.append(text)
    return unique


def kernel_cmdline(share: Path, *, extra: str = "") -> str:
    # Unknown name=value parameters reach /init as environment variables (images/lab/init.sh.in).
    # The venv's python is named by its venv path (not resolved) so that it finds its site-packages.
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        python = Path(sys.executable)
    pypath = [str(REPO), *(p for p in site.getsitepackages() if Path(p).is_dir())]
    parts = [
        "console=ttyS0",
        "panic=-1",
        # Boot-time savings under TCG: no TSC calibration or watchdog checks, no mitigation patching,
        # no crypto self-tests.
        "mitigations=off",
        "tsc=reliable",
        "no_timer_check",
        "lpj=10000000",
        "cryptomgr.notests",
        "quiet" if not settings.lab_verbose() else "initcall_debug ignore_loglevel log_buf_len=4M",
        f"labshare={share}",
        f"labrepo={REPO}",
        f"labpython={python}",
        f"labpypath={':'.join(pypath)}",
        # Host folders L1 must see although they may live under /tmp or /run, which L1 covers with tmpfs
        # (its 9p root is read-only): the repository (and its .venv), the cache (QEMU 7.2, the lab build),
        # the Python installation. /init keeps only those under a covered folder (images/lab/init.sh.in).
        f"labkeep={':'.join(_kept_folders())}",
    ]
    for name, value in (("share", share), ("repository", REPO), ("python", python), ("path", ":".join(pypath))):
        if re.search(r"\s", str(value)):
            raise LabBootError(f"the lab passes the {name} path on the kernel command line; {value!r} has blanks")
    pyopts = settings.lab_pyopts()
    if pyopts:
        parts.append(f"labpyopts={pyopts}")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def l1_argv(
    image: LabImage,
    variant: str,
    share: Path,
    serial_log: Path,
    accel: AccelChoice,
    *,
    qemu: str = DEFAULT_QEMU,
    cmdline_extra: str = "",
) -> list[str]:
    if variant not in image.initramfs:
        raise LabBootError(f"unknown lab variant {variant!r}: the image has {sorted(image.initramfs)}")
    # Under KVM the CPU model harness.probe found to run (plain "host" aborts on some hosts); under TCG -cpu max
    # (L2 runs TCG inside either way).
    cpu = ["-cpu", accel.cpu or "host"] if accel.accel == "kvm" else ["-cpu", "max"]
    return [
        qemu,
        "-accel", accel.accel,
        *cpu,
        "-m", str(L1_MEMORY_MB),
        "-smp", str(L1_CPUS),
        "-nographic", "-nodefaults", "-no-reboot",
        "-serial", f"file:{serial_log}",
        "-monitor", "none",
        "-kernel", image.vmlinux or image.vmlinuz,
        "-initrd", image.initramfs[variant],
        "-append", kernel_cmdline(share, extra=cmdline_extra),
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=labshare,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=labshare,mount_tag=labshare",
    ]  # fmt: skip


@dataclass
class _L1Run:
    status: int | None
    timed_out: bool
    runner_start: float | None
    runner_ready: float | None


async def _run_l1(argv: list[str], serial_log: Path, timeout: float, ready_file: Path | None = None) -> _L1Run:
    """Runs one L1 QEMU to its end (or the timeout), noting when the runner starts and is ready."""
    started = time.monotonic()
    serial_log.write_bytes(b"")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=procutil.child_preexec(os.getpid()),
    )
    procutil.register(proc.pid, "L1 QEMU (VFIO lab)")
    runner_start: float | None = None
    runner_ready: float | None = None
    timed_out = False
    try:
        deadline = started + timeout
        while proc.returncode is None:
            if runner_start is None and b"LAB: runner-start" in serial_log.read_bytes():
                runner_start = time.monotonic() - started
            if runner_ready is None and ready_file is not None and ready_file.exists():
                runner_ready = time.monotonic() - started
            if time.monotonic() > deadline:
                timed_out = True
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)
    finally:
        if proc.returncode is None:
            procutil.kill_group(proc.pid)
            await proc.wait()
        procutil.unregister(proc.pid)
    stderr = await proc.stderr.read() if proc.stderr else b""
    if stderr.strip():
        with serial_log.open("ab") as fh:
            fh.write(b"\n--- L1 QEMU stderr ---\n" + stderr)
    if runner_start is None and b"LAB: runner-start" in serial_log.read_bytes():
        runner_start = time.monotonic() - started
    return _L1Run(None if timed_out else proc.returncode, timed_out, runner_start, runner_ready)


def choose_accel(image: LabImage, qemu: str = DEFAULT_QEMU) -> AccelChoice:
    """KVM only when it can boot the lab kernel; the answer is cached per host kernel and QEMU binary.

    Probed, never assumed from the host's kind: harness.probe says whether KVM runs this QEMU at all and with
    which -cpu, then whether it boots the guest image's Linux kernel (probe_linux_boot). A "no" there means TCG
    without trying the lab kernel; a "yes" (or "not probed", when the guest image cannot be built) leaves it to
    one bounded KVM boot of the lab kernel in probe mode. MIGCONFORM_LAB_ACCEL=kvm|tcg overrides.
    """
    from harness.binaries import load_binary
    from harness.linux_boot import probe_linux_boot
    from harness.probe import probe_binary

    forced = settings.lab_accel()
    if forced == "tcg":
        return AccelChoice("tcg", settings.LAB_ACCEL)
    binary = load_binary(qemu)
    kvm = probe_binary(binary).kvm
    if forced == "kvm":
        return AccelChoice("kvm", settings.LAB_ACCEL, kvm.cpu)
    if not kvm.usable or kvm.cpu is None:
        return AccelChoice("tcg", f"harness.probe: {kvm.reason}")
    linux = probe_linux_boot(binary)
    if linux.boots is False:
        return AccelChoice("tcg", f"harness.probe: KVM boots Linux? {linux.detail}")
    key = f"{os.uname().release}|{qemu}|{os.stat(qemu).st_mtime_ns}|{image.kernel_release}|{kvm.cpu}"
    record = lab_cache() / "accel-probe.json"
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(record.read_text())
        if cached.get("key") == key:
            return AccelChoice(cached["accel"], cached["reason"], cached.get("cpu"))
    choice = _probe_kvm_boot(image, qemu, kvm.cpu)
    with contextlib.suppress(OSError):
        record.write_text(json.dumps({"key": key, "accel": choice.accel, "reason": choice.reason, "cpu": choice.cpu}))
    return choice


def _probe_kvm_boot(image: LabImage, qemu: str, cpu: str) -> AccelChoice:
    probe_dir = lab_cache() / "accel-probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    log = probe_dir / "serial.log"
    argv = l1_argv(
        image, "stock", probe_dir, log, AccelChoice("kvm", "probe", cpu), qemu=qemu, cmdline_extra="labprobe=1"
    )
    run = asyncio.run(_run_l1(argv, log, timeout=30.0))
    status, timed_out = run.status, run.timed_out
    if not timed_out and b"LAB: probe-ok" in log.read_bytes():
        return AccelChoice("kvm", f"a KVM boot of the lab kernel with -cpu {cpu} reached /init", cpu)
    why = "timed out" if timed_out else f"exited with status {status}"
    return AccelChoice("tcg", f"a KVM boot of the lab kernel {why} before /init (see {log})")


async def boot(
    image: LabImage,
    variant: str,
    share: Path,
    *,
    timeout: float,
    qemu: str = DEFAULT_QEMU,
    accel: AccelChoice | None = None,
) -> BootResult:
    """Boots L1 once; its runner reads ``share/request.pickle`` and writes results to ``share``.

    An L1 that dies by a signal before the runner started is booted once more (``failed_boots`` then names the
    first boot's log); a second such death raises :class:`harness.vfio_lab.l1_abort.L1Aborted`. ``timeout``
    bounds each boot; ``total_s`` counts them all."""
    chosen: AccelChoice = accel if accel is not None else await asyncio.to_thread(choose_accel, image, qemu)
    serial_log = share / "serial.log"
    argv = l1_argv(image, variant, share, serial_log, chosen, qemu=qemu)
    (share / "l1-argv.json").write_text(json.dumps(argv, indent=1))
    started = time.monotonic()
    run, failed = await run_l1_retrying(argv, share, serial_log, timeout)
    text = serial_log.read_text(errors="replace")
    exit_match = re.search(r"LAB: runner-exit (\d+)", text)
    problems = re.findall(r"LAB: ((?:insmod|mount)-failed .*)", text)
    return BootResult(
        returncode=run.status,
        timed_out=run.timed_out,
        serial_log=serial_log,
        accel=chosen,
        runner_start_s=None if run.runner_start is None else round(run.runner_start, 2),
        runner_ready_s=None if run.runner_ready is None else round(run.runner_ready, 2),
        total_s=round(time.monotonic() - started, 2),
        runner_exit=int(exit_match.group(1)) if exit_match else None,
        problems=problems,
        failed_boots=failed,
    )


async def run_l1_retrying(
    argv: list[str], share: Path, serial_log: Path, timeout: float
) -> tuple[_L1Run, list[FailedBoot]]:
    """:func:`_run_l1`, booted once more when L1 dies by a signal before the runner started
    (harness.vfio_lab.l1_abort.abort_decision); raises L1Aborted when the second boot dies so too."""
    from harness.vfio_lab.inside import RUNNER

    inputs = {path.name for path in share.iterdir()}
    failed: list[FailedBoot] = []
    while True:
        run = await _run_l1(argv, serial_log, timeout, ready_file=share / RUNNER)
        decision = abort_decision(run.status, runner_reported(share), len(failed) + 1)
        # A SIGINT/SIGTERM of the harness kills L1 (harness.procutil): that death is ours, and nothing new starts.
        if decision == "accept" or procutil.interrupted() is not None:
            return run, failed
        failed.append(keep_failed_boot(share, inputs, len(failed) + 1, run.status))
        if decision == "raise":
            raise L1Aborted(failed)


def runner_reported(share: Path) -> bool:
    """Whether the runner said it started: it writes runner.json before it runs anything, and appends to
    outcomes.jsonl after every scenario (harness.vfio_lab.inside)."""
    from harness.vfio_lab.inside import OUTCOMES, RUNNER

    return (share / RUNNER).exists() or (share / OUTCOMES).exists()


def keep_failed_boot(share: Path, inputs: set[str], boot_number: int, status: int | None) -> FailedBoot:
    """Moves what the failed boot wrote (its serial log with the L1 QEMU's stderr, anything /init wrote) into
    ``share/l1-tryN/``, so the next boot starts with the share as the harness prepared it (the request), and the
    failed boot's log stays next to the retry's."""
    kept = share / f"l1-try{boot_number}"
    kept.mkdir()
    for path in sorted(share.iterdir()):
        if path.name not in inputs and path != kept and not path.name.startswith("l1-try"):
            path.rename(kept / path.name)
    log = kept / "serial.log"
    line = abort_line(log.read_text(errors="replace")) if log.exists() else None
    return FailedBoot(boot_number, status, log, line)
