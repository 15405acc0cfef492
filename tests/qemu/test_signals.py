"""Hostile ends of a real run: signals mid-run, a SIGINT inherited as ignored, a QEMU that never offers QMP,
a QEMU stopped (SIGSTOP) after the migration.

Each signal test runs ``python -m harness run`` as a real subprocess on real QEMU, with ``TMPDIR`` pointed at
a folder of its own: every QEMU of that run has a socket path under it on its command line, so "no QEMU left"
is checked by scanning /proc for that folder (it also catches a QEMU orphaned to init), and "no temp folder
left" is that folder being empty. The signal is sent once the run's destination QEMU exists (polled from the
process table, not guessed with a sleep), so an item is always in flight when it arrives.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import procutil
from harness.binaries import QemuBinary
from harness.errors import HostEnvironmentError, QemuLaunchError, QmpTimeout
from harness.executor import execute
from harness.loader import load_scenario
from harness.pair import MigrationPair

REPO = Path(__file__).resolve().parents[2]
VM = ["-machine", "q35", "-accel", "tcg", "-m", "256M"]
# Slow enough that each scenario's migration takes seconds, so a signal reliably lands mid-item.
SLOW_SCENARIO = """\
description = "A slow precopy (rate-limited): long enough to be interrupted mid-migration."

[vm]
memory = "256M"
accel = "tcg"

[[step]]
action = "set-parameters"
side = "source"
parameters = {{ max-bandwidth = {bandwidth} }}

[[step]]
action = "migrate"
transport = "file"

[[step]]
action = "wait"
"""
# A bounded wait for things a test waits on (a process appearing, a run ending): generous, never asserted on.
WAIT_S = 240.0
NEVER_RETRIEVED = ("exception was never retrieved", "Task was destroyed", "Traceback")


def _write_suite(folder: Path, count: int, bandwidth: int) -> Path:
    folder.mkdir()
    for index in range(count):
        (folder / f"slow-{index}.toml").write_text(SLOW_SCENARIO.format(bandwidth=bandwidth))
    return folder


def _processes_mentioning(marker: str) -> list[int]:
    """Every live (non-zombie) process whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and procutil.pid_alive(int(entry)) and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def _qemus_of(tmpdir: Path, role: str = "") -> list[int]:
    """The run's QEMUs: their QMP socket path lies under the run's TMPDIR."""
    return [pid for pid in _processes_mentioning(str(tmpdir)) if f"{role}.qmp" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class Run:
    """One ``python -m harness run`` subprocess with its own TMPDIR and results file."""

    def __init__(self, tmp_path: Path, scenarios: Path, *, ignore_sigint: bool = False, jobs: int = 1) -> None:
        # Short, like a real TMPDIR: QMP and console sockets live there, and Unix socket paths must stay under
        # 108 bytes (a pytest tmp_path is too deep for that).
        self.tmpdir = Path(tempfile.mkdtemp(prefix="mcsig-", dir="/tmp"))
        self.json_path = tmp_path / "results.json"
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        argv = [sys.executable, "-m", "harness", "run", str(scenarios), "--json", str(self.json_path)]
        argv += ["--jobs", str(jobs), "--qemu", "/usr/bin/qemu-system-x86_64", "--timeout", "120"]

        def preexec() -> None:
            if ignore_sigint:  # what `cmd &` in a non-interactive shell does to the background command
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec
        )
        self.stdout = b""
        self.stderr = b""

    def wait_in_flight(self) -> None:
        """Until the run's first destination QEMU exists: an item is then in flight."""
        _wait_for(lambda: bool(_qemus_of(self.tmpdir, "destination")), "a destination QEMU", self.proc)

    def finish(self) -> int:
        self.stdout, self.stderr = self.proc.communicate(timeout=WAIT_S)
        return self.proc.returncode

    def results(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.json_path.read_text())
        return data

    def leftovers(self) -> tuple[list[int], list[str]]:
        """QEMUs of this run still alive (after a bounded grace for SIGKILLed ones to vanish) and files left
        in its TMPDIR."""
        deadline = time.monotonic() + 10.0
        while _processes_mentioning(str(self.tmpdir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return _processes_mentioning(str(self.tmpdir)), sorted(p.name for p in self.tmpdir.iterdir())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _processes_mentioning(str(self.tmpdir)):  # only this run's QEMUs (their TMPDIR is ours)
            procutil.kill_group(pid)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def hostile_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    if not Path("/usr/bin/qemu-system-x86_64").exists():
        pytest.skip("needs /usr/bin/qemu-system-x86_64")
    runs: list[Run] = []

    def start(count: int = 3, bandwidth: int = 2 * 1024 * 1024, **kwargs: Any) -> Run:
        scenarios = _write_suite(tmp_path / "scenarios", count, bandwidth)
        run = Run(tmp_path, scenarios, **kwargs)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


def _assert_interrupted_cleanly(run: Run, status: int, expected: int, signame: str) -> None:
    stderr = run.stderr.decode(errors="replace")
    assert status == expected, f"exit status {status}, expected {expected}; stderr:\n{stderr[-3000:]}"
    results = run.results()
    meta = results["meta"]
    assert meta.get("interrupted") is True, meta
    assert meta.get("end"), meta
    assert meta.get("signal") == signame, meta
    # The item in flight was killed by us: not QEMU's answer, so neither a divergence nor an error.
    assert [c for c in results["comparisons"] if not c.get("agree")] == []
    assert results["errors"] == []
    assert results["not_run"], "the item in flight and the ones after it must be listed as not run"
    assert len(results["comparisons"]) + len(results["not_run"]) == 3
    for text in NEVER_RETRIEVED:
        assert text not in stderr, stderr[-3000:]
    qemus, files = run.leftovers()
    assert qemus == [], f"QEMUs of the run still alive: {[_cmdline(p) for p in qemus]}"
    contents = {name: sorted(os.listdir(run.tmpdir / name)) for name in files if (run.tmpdir / name).is_dir()}
    assert files == [], f"left in TMPDIR: {files} {contents}"


@pytest.mark.parametrize(
    ("signum", "expected", "signame", "jobs"),
    [(signal.SIGINT, 130, "SIGINT", 1), (signal.SIGTERM, 143, "SIGTERM", 1), (signal.SIGINT, 130, "SIGINT", 2)],
)
def test_signal_mid_run_stops_the_run(
    hostile_run: Callable[..., Run], signum: int, expected: int, signame: str, jobs: int
) -> None:
    """Ctrl-C or a SIGTERM mid-run: the run stops, kills its QEMUs, records nothing from the items in flight
    (their QEMUs' deaths are our doing), writes its JSON marked interrupted, cleans its temp folders and exits
    128 + the signal. ``jobs=2``: two items in flight, so two executors unwind at once."""
    run = hostile_run(jobs=jobs)
    run.wait_in_flight()
    run.proc.send_signal(signum)
    status = run.finish()
    _assert_interrupted_cleanly(run, status, expected, signame)


def test_sigint_inherited_as_ignored_stays_ignored(hostile_run: Callable[..., Run]) -> None:
    """`migconform run ... &` from a script: SIGINT arrives ignored, and a SIGINT must change nothing."""
    run = hostile_run(count=2, bandwidth=8 * 1024 * 1024, ignore_sigint=True)
    run.wait_in_flight()
    qemus = _qemus_of(run.tmpdir)
    run.proc.send_signal(signal.SIGINT)
    status = run.finish()
    stderr = run.stderr.decode(errors="replace")
    results = run.results()
    assert results["errors"] == [], results["errors"]
    assert [c for c in results["comparisons"] if not c.get("agree")] == []
    assert len(results["comparisons"]) == 2
    assert results["meta"].get("interrupted") is False
    assert status == 0, stderr[-3000:]
    # The QEMUs that were running when SIGINT came were not killed by it (they ended with their scenario).
    assert qemus
    assert run.leftovers() == ([], [])


# ---------------------------------------------------------------------------------- hung or stopped QEMU

NO_QMP_QEMU = """\
#!/bin/sh
# A "QEMU" that answers --version like QEMU and otherwise never offers QMP.
case "$1" in --version) echo "QEMU emulator version 10.0.2"; exit 0;; esac
exec sleep 600
"""


def _fake_binary(tmp_path: Path) -> QemuBinary:
    path = tmp_path / "qemu-system-x86_64"
    path.write_text(NO_QMP_QEMU)
    path.chmod(0o755)
    from harness.binaries import load_binary

    return load_binary(str(path))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir short enough for Unix sockets (< 108 bytes), unlike a deep pytest tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="mcsig-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_launch_that_never_offers_qmp_names_side_step_and_log(
    tmp_path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    binary = _fake_binary(tmp_path)
    logs = tmp_path / "logs"

    async def scenario() -> QemuLaunchError:
        pair = MigrationPair(binary, VM, VM, log_dir=logs, launch_timeout=2.0)
        try:
            await pair.start_source()
            await pair.start_destination()
        except QemuLaunchError as exc:
            return exc
        finally:
            await pair.close()
        raise AssertionError("a QEMU that never offers QMP was taken as launched")

    error = asyncio.run(scenario())
    assert error.exit_status is None
    assert str(error).startswith("source QEMU did not offer QMP within 2 s (step: startup"), str(error)
    assert error.log_path == str(logs / "source.log")
    assert Path(error.log_path).exists(), "the log the error cites must outlive the launch"
    assert list(short_tmp.iterdir()) == [], "the QMP socket folder must be removed"


def test_execute_respects_timeout_for_a_qemu_without_qmp(
    tmp_path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole item, probes included, is bounded by --timeout; the error names the side and the step; the
    probes' and the pair's temp folders are gone afterwards."""
    tmp = short_tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    binary = _fake_binary(tmp_path)
    workdir = tmp_path / "work"
    path = tmp_path / "no-qmp.toml"
    path.write_text('[vm]\nmemory = "64M"\naccel = "tcg"\n\n[[step]]\naction = "migrate"\ntransport = "tcp"\n')
    scenario = load_scenario(path)
    with pytest.raises(Exception) as info:
        asyncio.run(execute(scenario, binary, workdir=workdir, timeout=3.0))
    text = str(info.value)
    assert "did not offer QMP within 3 s" in text, text
    assert "startup" in text, text
    # The probe meets the binary first: a binary that never offers QMP is the host's problem (an environment
    # error naming the binary), bounded by the run's --timeout like the pair's own launch would be.
    assert isinstance(info.value, HostEnvironmentError), repr(info.value)
    assert str(binary.path) in text, text
    assert list(tmp.iterdir()) == [], "temp folders left by the probes or the pair"


def test_stopped_qemu_after_migration_is_a_named_error(qemu_binary: QemuBinary, tmp_path: Path) -> None:
    """SIGSTOP after the migration: the final-state queries time out on a live process; that is the harness's
    error naming side and command, never a null state."""

    async def scenario() -> QmpTimeout:
        async with MigrationPair(qemu_binary, VM, VM, log_dir=tmp_path, command_timeout=2.0) as pair:
            await pair.migrate("tcp")
            await pair.wait_source_end(60.0)
            pid = pair.source.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                await pair.final_states()
            except QmpTimeout as exc:
                return exc
            finally:
                os.kill(pid, signal.SIGCONT)
        raise AssertionError("a stopped source gave a final state")

    error = asyncio.run(scenario())
    assert error.side == "source"
    assert error.command in ("query-migrate", "query-status")
    assert "process state: stopped" in str(error), str(error)
    assert str(error).startswith(f"source QEMU did not answer {error.command} within 2 s"), str(error)
