"""Every QEMU we start dies with us.

Three independent nets, because each one alone has a hole:
- each QEMU runs in its own process group (``start_new_session``), so a group kill reaches anything it
  forks and a Ctrl-C in the terminal does not hit it before we have had a chance to record its state;
- ``PR_SET_PDEATHSIG=SIGKILL`` in the child (armed by exec'ing through ``setpriv --pdeathsig KILL``, or
  by a ``preexec_fn`` where setpriv is missing), so the kernel kills it if we die without running any
  Python (SIGKILL, OOM, a crashed worker). Linux sends it when the *thread* that forked the child exits,
  so a QEMU must be started from the thread that owns it (the event loop's thread), which the driver does;
- a module-level registry of live QEMU processes, killed at interpreter exit (atexit) and on
  SIGINT/SIGTERM (after which the previous handler runs, so Ctrl-C still raises KeyboardInterrupt and
  SIGTERM still terminates).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # no libc symbols in this process (not Linux): fall back to the other two nets
    _libc = None

_lock = threading.Lock()
_live: dict[int, str] = {}  # pid (== process group id) -> label, for messages
# Every QEMU ever registered in this process, as (pid, kernel start time): the start time tells our
# process apart from a later one that reuses the pid (tests check they are all gone).
_started: list[tuple[int, int | None]] = []
_atexit_installed = False
_signals_installed = False
_previous_handlers: dict[int, Any] = {}


def child_preexec(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that arms PR_SET_PDEATHSIG=SIGKILL in the child.

    If the parent already died between fork and prctl, the signal would never come: exit at once then.
    Runs between fork and exec, so it only calls async-signal-safe things (prctl, getppid, _exit).
    """
    libc = _libc

    def preexec() -> None:
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


@functools.cache
def pdeathsig_wrapper() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` (util-linux) when this system has it, else ().

    Arming PDEATHSIG through a ``preexec_fn`` forces Python to fork() and run Python code in the child:
    measured ~16 ms per launch against ~3 ms for exec'ing through setpriv, which sets the same prctl and
    then execs QEMU in the same process (the setting survives execve). The price is that setpriv cannot
    notice a parent that died in the ~1 ms before its prctl; atexit and the signal handlers still cover
    every death but SIGKILL in that window. Without setpriv, :func:`child_preexec` is used instead.
    """
    path = shutil.which("setpriv")
    if path is None:
        return ()
    try:
        result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return (path, "--pdeathsig", "KILL", "--") if "--pdeathsig" in result.stdout else ()


def register(pid: int, label: str) -> None:
    """Remember a live QEMU (its own process group) so that exit paths can kill it."""
    with _lock:
        _live[pid] = label
        _started.append((pid, _start_time(pid)))
    _install_handlers()


def unregister(pid: int) -> None:
    """Forget a QEMU that has been reaped (after waitpid, its pid may be reused: never kill it again)."""
    with _lock:
        _live.pop(pid, None)


def live_processes() -> dict[int, str]:
    """The QEMU processes started by this process and not yet reaped."""
    with _lock:
        return dict(_live)


def started_pids() -> tuple[int, ...]:
    """Every QEMU pid this process ever started."""
    with _lock:
        return tuple(pid for pid, _ in _started)


def started_still_running() -> list[int]:
    """The QEMUs this process started that are still running (same pid *and* start time, not a zombie)."""
    with _lock:
        started = list(_started)
    return [pid for pid, start in started if start is not None and _start_time(pid) == start and pid_alive(pid)]


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the parenthesised command name (which may itself contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split() if ")" in stat else None


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # field 22 (starttime) of proc(5) is index 19 after the command name (fields 3.. start at index 0)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Whether a pid exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a registered QEMU's whole process group; a group that is already gone is fine."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # not our group after all (should not happen): fall back to the process
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_all() -> None:
    """SIGKILL every registered QEMU. Safe to call from a signal handler or atexit, and more than once."""
    for pid in list(live_processes()):
        kill_group(pid)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    kill_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """Install the atexit hook always, and the signal handlers the first time we are on the main thread.

    Signal handlers can only be set from the main thread; a worker thread that starts QEMU still has
    PDEATHSIG and atexit.
    """
    global _atexit_installed, _signals_installed
    with _lock:
        need_atexit = not _atexit_installed
        _atexit_installed = True
        need_signals = not _signals_installed and threading.current_thread() is threading.main_thread()
        if need_signals:
            _signals_installed = True
    if need_atexit:
        atexit.register(kill_all)
    if not need_signals:
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous = signal.getsignal(signum)
            signal.signal(signum, _on_signal)
        except (ValueError, OSError):
            continue
        _previous_handlers[signum] = previous
