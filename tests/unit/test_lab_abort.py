"""The lab's answer to an L1 QEMU that dies by a signal while booting (harness.vfio_lab.l1_abort), and the measured
bound on a binary's first probe inside L1 (harness.vfio_lab.inside.probe_bound).

The decision is pure and tested as a table. The boot loop around it is tested with a small shell script in place of
the L1 QEMU (boot() takes the QEMU's path): it really dies by SIGABRT, as QEMU's failed assertion does, so the exit
status, the stderr collection and the share's bookkeeping are the real ones. No QEMU and no lab image are needed.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from harness.errors import HostEnvironmentError
from harness.probe import PROBE_LAUNCH_TIMEOUT_S
from harness.vfio_lab.boot import AccelChoice, BootResult, boot
from harness.vfio_lab.build import LabImage
from harness.vfio_lab.inside import PROBE_BOOT_FACTOR, probe_bound
from harness.vfio_lab.l1_abort import (
    STDERR_MARK,
    FailedBoot,
    L1Aborted,
    abort_decision,
    abort_line,
    status_text,
)

# What the fresh-clone CI run's serial log held (SeaBIOS's lines, then the L1 QEMU's stderr as boot.py appends it).
ASSERTION = (
    "qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion "
    "`section_index < d->map.sections_nb' failed."
)
CI_LOG = f"SeaBIOS (version 1.16.3-debian-1.16.3-2~bpo12+1)\nBooting from ROM..\n{STDERR_MARK}\n{ASSERTION}\n"


@pytest.mark.parametrize(
    ("status", "runner_started", "boot_number", "expected"),
    [
        (-6, False, 1, "retry"),  # SIGABRT while booting: once more
        (-11, False, 1, "retry"),  # SIGSEGV alike
        (-6, False, 2, "raise"),  # the second such death: the host's QEMU cannot boot the lab
        (-6, True, 1, "accept"),  # after the runner started: may be a real QEMU bug in L2's reach, never hidden
        (-11, True, 2, "accept"),
        (0, False, 1, "accept"),  # a normal exit without the runner: reported as before (LabRunError)
        (1, False, 1, "accept"),
        (None, False, 1, "accept"),  # timed out (killed by the harness): not a death of its own
    ],
)
def test_only_a_signal_death_before_the_runner_is_retried_once(
    status: int | None, runner_started: bool, boot_number: int, expected: str
) -> None:
    assert abort_decision(status, runner_started, boot_number) == expected


def test_the_assertion_line_is_read_from_the_stderr_appended_to_the_serial_log() -> None:
    assert abort_line(CI_LOG) == ASSERTION
    # stderr without an assertion: its last line; a log without stderr or a reason: nothing.
    assert abort_line(f"Booting from ROM..\n{STDERR_MARK}\nsome warning\nlast words\n") == "last words"
    assert abort_line("SeaBIOS\nBooting from ROM..\n") is None
    assert status_text(-6) == "-6 (SIGABRT)" and status_text(-11) == "-11 (SIGSEGV)" and status_text(1) == "1"


def test_two_deaths_are_an_environment_error_naming_both_statuses_and_the_line(tmp_path: Path) -> None:
    error = L1Aborted(
        [FailedBoot(1, -6, tmp_path / "l1-try1/serial.log", ASSERTION), FailedBoot(2, -11, tmp_path / "x", None)]
    )
    assert isinstance(error, HostEnvironmentError)
    assert "-6 (SIGABRT) and -11 (SIGSEGV)" in str(error)
    assert ASSERTION in str(error) and str(tmp_path / "l1-try1/serial.log") in str(error)


def test_the_first_probe_bound_scales_with_the_measured_boot_and_keeps_the_fixed_floor() -> None:
    assert probe_bound(None) == PROBE_LAUNCH_TIMEOUT_S
    assert probe_bound(2.0) == PROBE_LAUNCH_TIMEOUT_S  # a quick boot keeps harness.probe's own bound
    assert probe_bound(16.28) == pytest.approx(PROBE_BOOT_FACTOR * 16.28)
    assert probe_bound(16.28) > PROBE_LAUNCH_TIMEOUT_S


# --- the boot loop, with a script that really dies by SIGABRT in place of the L1 QEMU ---------------------------


def _fake_image(tmp_path: Path) -> LabImage:
    for name in ("vmlinux", "initramfs-stock.gz"):
        (tmp_path / name).write_text("")
    return LabImage(
        directory=str(tmp_path), key="test", kernel_release="6.12.0-test", kernel_package_version="0",
        series="6.12", vmlinuz=str(tmp_path / "vmlinux"), vmlinux=str(tmp_path / "vmlinux"),
        initramfs={"stock": str(tmp_path / "initramfs-stock.gz")}, personalities=["migratable"],
        unavailable_note="", busybox_version="0",
    )  # fmt: skip


def _l1_script(tmp_path: Path, body: str) -> str:
    """A stand-in L1 QEMU: ``$COUNT`` is how many times it ran before (kept outside the share)."""
    script = tmp_path / "fake-qemu.sh"
    count = tmp_path / "count"
    script.write_text(f"#!/bin/sh\nCOUNT=$(cat {count} 2>/dev/null || echo 0)\necho $((COUNT + 1)) > {count}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def _boot(tmp_path: Path, body: str) -> tuple[Path, BootResult | L1Aborted]:
    share = tmp_path / "share"
    share.mkdir()
    (share / "request.pickle").write_text("request")
    (tmp_path / "assertion.txt").write_text(ASSERTION + "\n")
    body = body.replace("SHARE", str(share)).replace("ASSERTION_FILE", str(tmp_path / "assertion.txt"))
    qemu = _l1_script(tmp_path, body)
    coro = boot(_fake_image(tmp_path), "stock", share, timeout=30, qemu=qemu, accel=AccelChoice("tcg", "test"))
    try:
        return share, asyncio.run(coro)
    except L1Aborted as exc:
        return share, exc


# QEMU's words on stderr, then death by SIGABRT as assert() does (the text is in a file: it has quotes and backquotes).
ABORT = "cat ASSERTION_FILE >&2; kill -ABRT $$"


def test_an_l1_that_aborts_twice_before_the_runner_is_an_environment_error(tmp_path: Path) -> None:
    share, result = _boot(tmp_path, ABORT)
    assert isinstance(result, L1Aborted), result
    assert [f.status for f in result.failed] == [-6, -6]
    assert "-6 (SIGABRT) and -6 (SIGABRT)" in str(result) and ASSERTION in str(result)
    # Each boot's log kept, the request left where the retry found it.
    for n in (1, 2):
        assert ASSERTION in (share / f"l1-try{n}" / "serial.log").read_text()
    assert (share / "request.pickle").read_text() == "request"


def test_an_l1_that_aborts_once_is_booted_again_and_names_the_failed_boot(tmp_path: Path) -> None:
    body = f'if [ "$COUNT" = 0 ]; then {ABORT}; fi\necho "LAB: runner-exit 0" >> SHARE/serial.log\nexit 0'
    share, result = _boot(tmp_path, body)
    assert isinstance(result, BootResult), result
    assert result.returncode == 0 and result.runner_exit == 0
    failed = result.failed_boots
    assert [(f.boot_number, f.status, f.line) for f in failed] == [(1, -6, ASSERTION)]
    assert failed[0].log == share / "l1-try1" / "serial.log" and failed[0].log.exists()
    assert (tmp_path / "count").read_text().strip() == "2"


def test_an_l1_that_aborts_after_the_runner_started_is_not_retried(tmp_path: Path) -> None:
    share, result = _boot(tmp_path, 'echo "{}" > SHARE/runner.json\n' + ABORT)
    assert isinstance(result, BootResult), result
    assert result.returncode == -6 and result.failed_boots == []
    assert (tmp_path / "count").read_text().strip() == "1"
    assert ASSERTION in (share / "serial.log").read_text()
