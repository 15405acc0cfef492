"""harness.probe against real processes: its answers must agree with what a test sees for itself on THIS host.

Hosts differ (docs/real-qemu-facts.md, "Probes"): on one, plain ``-cpu host`` aborts under KVM; on another it
runs; on a third there is no /dev/kvm at all, and KVM may or may not boot Linux. So no test here names the host's
answer. Each one looks for itself (QEMU run directly, over QMP on stdio, or a serial console read by the test)
and checks that the probe says the same. A binary that cannot run the probe at all is a real shell script in
tmp_path, not a mock.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.scenario import VmSpec
from harness.binaries import BinaryRunError, QemuBinary, load_binary
from harness.errors import BinaryError, HostEnvironmentError
from harness.execution.preflight import guest_accel
from harness.executor import run_scenario
from harness.guest.image import GuestImage, GuestImageError, build_image
from harness.linux_boot import LINUX_BOOT_BOUND_S, LINUX_BOOT_MARKER, boot_to_init, probe_linux_boot
from harness.loader import load_scenario
from harness.probe import KVM_CPU_CANDIDATES, choose_accel, host_facts, probe_binary, probe_host
from harness.results import save
from harness.runner import RunOptions, run_sync
from harness.targets import targets_for_binaries

# What a test allows a QEMU it starts itself before giving up (a bound, not an assertion about time).
OWN_RUN_BOUND_S = 60.0
TCG_BOOT_BOUND_S = 180.0  # TCG boots this kernel in seconds; a loaded 2-core host may need many more


def _guest_image() -> GuestImage | None:
    try:
        return build_image()
    except GuestImageError:
        return None


# ------------------------------------------------------------------------------------------ KVM and -cpu


def _runs_under_kvm(binary: QemuBinary, cpu: str) -> tuple[bool, str]:
    """Our own look, with no harness code: a paused firmware-only VM under KVM with ``cpu``, then cont,
    query-status and quit over QMP on stdio. Runs = it answered "running" and quit cleanly."""
    commands = "".join(json.dumps({"execute": c}) + "\n" for c in ("qmp_capabilities", "cont", "query-status", "quit"))
    argv = binary.argv(
        "-machine", "q35", "-accel", "kvm", "-cpu", cpu, "-m", "64M", "-S",
        "-nodefaults", "-display", "none", "-qmp", "stdio",
    )  # fmt: skip
    done = subprocess.run(
        argv, input=commands, capture_output=True, text=True, env=binary.environ(), timeout=OWN_RUN_BOUND_S
    )
    running = done.returncode == 0 and '"status": "running"' in done.stdout
    return running, f"status {done.returncode}: {done.stderr.strip()[-300:]}"


def test_kvm_probe_agrees_with_running_the_binary_itself(qemu_binary: QemuBinary) -> None:
    """Whichever of -cpu host / host,-arch-capabilities runs here (or neither, or no /dev/kvm at all), the
    probe must have found the same, and the model's host facts follow the accelerator really chosen."""
    host = probe_host()
    assert host.kvm_device == os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert host.kernel == os.uname().release
    probe = probe_binary(qemu_binary)
    observed = {cpu: _runs_under_kvm(qemu_binary, cpu) for cpu in KVM_CPU_CANDIDATES}
    working = [cpu for cpu in KVM_CPU_CANDIDATES if observed[cpu][0]]
    assert probe.kvm.usable == bool(working), (probe.kvm, observed)
    assert probe.kvm.cpu == (working[0] if working else None), (probe.kvm, observed)
    # The probe tries the candidates in order and stops at the first that runs; each verdict matches ours.
    tried = [cpu for cpu, _ in probe.kvm.attempts]
    assert tried == list(KVM_CPU_CANDIDATES[: len(tried)])
    for cpu, result in probe.kvm.attempts:
        assert (result == "ok") == observed[cpu][0], (cpu, result, observed[cpu])
    if host.kvm_device:
        assert tried, "a usable /dev/kvm must be tried"
    # The model's host: KVM exactly when the VMs really run on it.
    assert host_facts(qemu_binary, "kvm").kvm is probe.kvm.usable
    assert host_facts(qemu_binary, "tcg").kvm is False
    auto, why = choose_accel("auto", probe, host)
    assert host_facts(qemu_binary, "auto").kvm is (auto == "kvm"), why
    if not probe.kvm.usable:
        assert auto == "tcg" and probe.kvm.reason in why


def test_invtsc_probe_agrees_with_the_filters_warning(qemu_binary: QemuBinary) -> None:
    """Our own look differs from the probe's (which starts the KVM model with +invtsc,enforce): without enforce,
    x86_cpu_filter_features warns "host doesn't support requested feature: CPUID.80000007H:EDX.invtsc" exactly
    when KVM drops the flag; no warning and a running VM is KVM keeping it. The model's host fact follows."""
    probe = probe_binary(qemu_binary)
    if not probe.kvm.usable or probe.kvm.cpu is None:
        assert probe.kvm.invtsc is None and host_facts(qemu_binary, "kvm").kvm_invtsc is False
        pytest.skip(f"KVM is not usable with this binary here: {probe.kvm.reason}")
    running, detail = _runs_under_kvm(qemu_binary, f"{probe.kvm.cpu},+invtsc")
    kept = running and "invtsc" not in detail
    assert probe.kvm.invtsc is kept, (probe.kvm.invtsc_detail, detail)
    assert host_facts(qemu_binary, "kvm").kvm_invtsc is kept
    assert host_facts(qemu_binary, "tcg").kvm_invtsc is False


def test_hyperv_probe_agrees_with_the_vcpus_blocker(qemu_binary: QemuBinary) -> None:
    """Our own look: a paused VM under KVM with hv-passthrough and query-migrate's blocked-reasons. The
    hv-passthrough blocker is there exactly when hyperv_enabled() (KVM_CAP_HYPERV), the probe's question."""
    probe = probe_binary(qemu_binary)
    host = probe_host()
    if not probe.kvm.usable or probe.kvm.cpu is None:
        assert host_facts(qemu_binary, "kvm").kvm_hyperv is None
        pytest.skip(f"KVM is not usable with this binary here: {probe.kvm.reason}")
    commands = "".join(json.dumps({"execute": c}) + "\n" for c in ("qmp_capabilities", "query-migrate", "quit"))
    argv = qemu_binary.argv(
        "-machine", "q35", "-accel", "kvm", "-cpu", f"{probe.kvm.cpu},hv-passthrough", "-m", "64M", "-S",
        "-nodefaults", "-display", "none", "-qmp", "stdio",
    )  # fmt: skip
    done = subprocess.run(
        argv, input=commands, capture_output=True, text=True, env=qemu_binary.environ(), timeout=OWN_RUN_BOUND_S
    )
    assert done.returncode == 0, done.stderr[-300:]
    blocked = "'hv-passthrough' CPU flag prevents migration" in done.stdout
    assert host.kvm_hyperv is blocked, (host.kvm_hyperv_detail, done.stdout[-500:])
    assert host_facts(qemu_binary, "kvm").kvm_hyperv is blocked
    assert host_facts(qemu_binary, "tcg").kvm_hyperv is None


# ------------------------------------------------------------------------------------------ Linux boot


def _own_boot_reaches_init(binary: QemuBinary, image: GuestImage, cpu: str, tmp_path: Path) -> tuple[bool, str]:
    """Our own boot of the guest image under KVM, watched on a serial file: did /init print its marker within
    the same bound the probe allows?"""
    console = tmp_path / "own-console.log"
    argv = binary.argv(
        "-machine", "q35", "-accel", "kvm", "-cpu", cpu, "-m", "128M", "-nodefaults", "-display", "none",
        "-no-reboot", "-serial", f"file:{console}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.cmdline,
    )  # fmt: skip
    proc = subprocess.Popen(argv, env=binary.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + LINUX_BOOT_BOUND_S
        while time.monotonic() < deadline and proc.poll() is None:
            if console.exists() and LINUX_BOOT_MARKER in console.read_bytes():
                return True, "marker seen"
            time.sleep(0.05)
        reached = console.exists() and LINUX_BOOT_MARKER in console.read_bytes()
        return reached, f"exit status {proc.poll()}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_linux_boot_probe_agrees_with_a_boot_of_its_own(qemu_binary: QemuBinary, tmp_path: Path) -> None:
    """Whether KVM boots Linux here is answered by a boot, never by the host's kind; the guest accelerator the
    executor picks follows that answer."""
    probe = probe_binary(qemu_binary)
    linux = probe_linux_boot(qemu_binary)
    spec = VmSpec()
    if not probe.kvm.usable:
        assert linux.boots is False and linux.detail.startswith("KVM is not usable")
        assert guest_accel(spec, probe, probe_host()) == ("tcg", "max")
        return
    image = _guest_image()
    if image is None:
        assert linux.boots is None and linux.detail.startswith("not probed: the guest image cannot be built")
        assert guest_accel(spec, probe, probe_host()) == ("tcg", "max")
        return
    assert linux.boots is not None and linux.cpu == probe.kvm.cpu
    assert probe.kvm.cpu is not None
    reached, how = _own_boot_reaches_init(qemu_binary, image, probe.kvm.cpu, tmp_path)
    assert linux.boots == reached, (linux, how)
    expected = ("kvm", probe.kvm.cpu) if reached else ("tcg", "max")
    assert guest_accel(spec, probe, probe_host()) == expected


def test_linux_boot_answer_is_kept_for_the_next_process(qemu_binary: QemuBinary) -> None:
    """Another process on the same host boot (a pytest worker, the next `migconform run`) reads the answer from
    disk instead of paying the bound again, and gets the same answer."""
    linux = probe_linux_boot(qemu_binary)
    if linux.boots is None or linux.detail.startswith("KVM is not usable"):
        assert not linux.from_disk  # nothing was booted, so nothing is kept
        return
    code = (
        "import json, sys\n"
        "from harness.binaries import load_binary\n"
        "from harness.linux_boot import probe_linux_boot\n"
        "answer = probe_linux_boot(load_binary(sys.argv[1]))\n"
        "print(json.dumps([answer.boots, answer.detail, answer.from_disk]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, qemu_binary.path], capture_output=True, text=True, timeout=OWN_RUN_BOUND_S
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [linux.boots, linux.detail, True]


def test_boot_to_init_sees_the_guest_reach_its_init(qemu_binary: QemuBinary) -> None:
    """The probe's boot watcher, under TCG (which every host has): it must see /init's marker, so a "no" from it
    under KVM means the kernel really did not get there."""
    image = _guest_image()
    if image is None:
        pytest.skip("the guest image cannot be built here (scripts/setup-guest.sh)")
    reached, what, tail = asyncio.run(
        boot_to_init(qemu_binary, image.kernel, image.initrd, image.cmdline, ["-accel", "tcg"], TCG_BOOT_BOUND_S)
    )
    assert reached, (what, tail)
    assert LINUX_BOOT_MARKER.decode() in tail and what.startswith("the kernel reached its init")


def test_boot_to_init_says_no_when_the_kernel_finds_no_init(qemu_binary: QemuBinary) -> None:
    """A kernel that boots but has no init to run panics; -no-reboot ends QEMU, and the watcher reports that
    (with the panic on the console) instead of waiting for the bound."""
    image = _guest_image()
    if image is None:
        pytest.skip("the guest image cannot be built here (scripts/setup-guest.sh)")
    cmdline = image.cmdline.replace("quiet", "") + " rdinit=/no-such-init init=/no-such-init"
    reached, what, tail = asyncio.run(
        boot_to_init(qemu_binary, image.kernel, image.initrd, cmdline, ["-accel", "tcg"], TCG_BOOT_BOUND_S)
    )
    assert not reached
    assert what.startswith("QEMU ended before the kernel reached its init"), (what, tail)
    assert "Kernel panic" in tail


# ------------------------------------------------------------------------------------------ broken binaries

BANNER = 'echo "QEMU emulator version 10.0.2"; echo "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project"'


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then {BANNER}; exit 0; fi\n{body}\n')
    path.chmod(0o755)
    return path


def _assert_environment_error(binary: QemuBinary, path: Path, words: str) -> None:
    with pytest.raises(HostEnvironmentError) as info:
        probe_binary(binary)
    message = str(info.value)
    assert str(path) in message and words in message, message
    # Cached, and raised again: a run pays the failure once, and never gets an answer from it.
    with pytest.raises(HostEnvironmentError):
        probe_binary(binary)


def test_a_binary_that_crashes_on_the_probe_is_an_environment_error(tmp_path: Path) -> None:
    path = _script(tmp_path, "crashes", 'echo "qemu-system-x86_64: simulated breakage" >&2\nkill -SEGV $$')
    binary = load_binary(path)
    assert str(binary.version) == "10.0.2"
    _assert_environment_error(binary, path, "simulated breakage")
    # The Linux boot probe and `migconform qemus` say the same, not a guess.
    with pytest.raises(HostEnvironmentError):
        probe_linux_boot(binary)
    from harness.qemus import format_qemus

    table = format_qemus([binary])
    assert "probe failed" in table and str(path) in table


def test_a_binary_that_exits_on_the_probe_is_an_environment_error(tmp_path: Path) -> None:
    path = _script(tmp_path, "exits", 'echo "qemu-system-x86_64: cannot do that here" >&2\nexit 1')
    _assert_environment_error(load_binary(path), path, "cannot do that here")


def test_a_binary_that_never_offers_qmp_is_an_environment_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.probe

    # The script never answers: no need to wait the probe's 20 s for that.
    monkeypatch.setattr(harness.probe, "PROBE_LAUNCH_TIMEOUT_S", 1.0)
    path = _script(tmp_path, "hangs", "exec sleep 600")
    _assert_environment_error(load_binary(path), path, "did not offer QMP")


def test_a_binary_that_fails_version_is_an_environment_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "broken"
    path.write_text('#!/bin/sh\necho "error while loading shared libraries: libfoo.so" >&2\nexit 127\n')
    path.chmod(0o755)
    with pytest.raises(BinaryRunError) as info:
        load_binary(path)
    assert isinstance(info.value, HostEnvironmentError) and isinstance(info.value, BinaryError)
    assert str(path) in str(info.value) and "libfoo.so" in str(info.value)
    # Discovery does not silently drop it either: a run would otherwise shrink without a word.
    from harness.binaries import discover_binaries

    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    (tmp_path / "qemu-system-x86_64").symlink_to(path)
    monkeypatch.delenv("QEMU_BINARY", raising=False)
    with pytest.raises(BinaryRunError):
        discover_binaries()


def test_a_failed_probe_never_becomes_an_outcome(tmp_path: Path) -> None:
    """Neither the executor nor the runner turns a binary that cannot be probed into QEMU's answer (a
    'refused at startup' that would diverge from the model)."""
    path = _script(tmp_path, "crashes", 'echo "qemu-system-x86_64: simulated breakage" >&2\nkill -SEGV $$')
    binary = load_binary(path)
    scenario_file = tmp_path / "precopy.toml"
    scenario_file.write_text('[migration]\ntransport = "tcp"\n')
    scenario = load_scenario(scenario_file)
    with pytest.raises(HostEnvironmentError):
        run_scenario(scenario, binary, workdir=tmp_path / "work", timeout=10.0)
    results = run_sync([scenario], targets_for_binaries([binary]), RunOptions(backend="both", jobs=1, timeout=10.0))
    assert results.comparisons == [] and results.outcomes == [], results
    assert not results.passed
    saved = tmp_path / "results.json"
    save(results, saved)
    assert str(path) in saved.read_text()  # reported, naming the binary
