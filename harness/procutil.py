"""Every QEMU we start dies with us.

Three independent nets, because each one alone has a hole:
- each QEMU runs in its own process group (``start_new_session``), so a group kill reaches anything it
  forks and a Ctrl-C in the terminal does not hit it before we have had a chance to record its state;
- ``PR_SET_PDEATHSIG=SIGKILL`` in the child (armed by exec'ing through ``setpriv --pdeathsig KILL``, or
  by a ``preexec_fn`` where setpriv is missing), so the kernel kills it if we die without running any
  Python (SIGKILL, OOM, a crashed worker). Linux sends it when the *thread* that forked the child exits,
  so a QEMU must be started from the thread that owns it (the event loop's thread), which the driver does;
- a module-level registry of live QEMU processes, killed at interpreter exit (atexit) and on
  SIGINT/SIGTERM.

What a SIGINT/SIGTERM does beyond killing every QEMU is one policy: the signal is remembered
(:func:`interrupted`), and a run in progress (harness.runner, through :func:`on_interrupt`) stops, writes
its results marked interrupted and exits 128 + the signal number. Outside a run the previous handler runs, so
Ctrl-C still raises KeyboardInterrupt and SIGTERM still terminates. A signal whose disposition was SIG_IGN
when we started (``cmd &`` in a non-interactive shell ignores SIGINT for ``cmd``) is left ignored: the user
(or their shell) asked for that signal not to end the program, so it must not end its QEMUs either.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # no libc symbols in this process (not Linux): fall back to the other two nets
    _libc = None

_lock = threading.RLock()  # re-entrant: the signal handler takes it on the main thread, which may hold it
_live: dict[int, str] = {}  # pid (== process group id) -> label, for messages
# Every QEMU ever registered in this process, as (pid, kernel start time): the start time tells our
# process apart from a later one that reuses the pid (tests check they are all gone).
_started: list[tuple[int, int | None]] = []
_atexit_installed = False
_signals_installed = False
_previous_handlers: dict[int, Any] = {}
_interrupted: int | None = None  # the first SIGINT/SIGTERM received, for the whole process
_interrupt_hooks: list[Callable[[int], None]] = []


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


PROCESS_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "uninterruptible sleep",
    "T": "stopped",
    "t": "stopped by a tracer",
    "Z": "zombie",
    "X": "dead",
    "I": "idle",
}


def process_state(pid: int) -> str:
    """proc(5)'s state of a process in words ("stopped" for SIGSTOP), for messages about a QEMU that does
    not answer; "gone" when there is no such process."""
    fields = _stat_fields(pid)
    if fields is None or not fields:
        return "gone"
    return PROCESS_STATES.get(fields[0], fields[0])


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


def thread_names(pid: int) -> list[str]:
    """The ``comm`` of every thread of ``pid`` ([] when it is gone): QEMU's thread names with
    ``-name debug-threads=on`` (cut to 15 characters by the kernel)."""
    names: list[str] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return names
    for tid in tids:
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
    return names


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


def interrupted() -> int | None:
    """The first SIGINT/SIGTERM this process received (its number), or None. Once set, nothing new starts:
    a QEMU launched after it is killed at once, and a run records no further outcome."""
    return _interrupted


def _reset_interrupted() -> None:
    """Forget a received signal (only for tests that drive the handler in-process)."""
    global _interrupted
    _interrupted = None


@contextlib.contextmanager
def on_interrupt(hook: Callable[[int], None]) -> Iterator[None]:
    """While inside: on SIGINT/SIGTERM, call ``hook(signum)`` (on the main thread, from the signal handler,
    after every QEMU was killed) instead of the previous handler. The runner uses it to cancel its main task.

    Installs the handlers right away (not at the first QEMU), so a signal that comes during the probes or
    before any launch already follows the run's policy."""
    _install_handlers()
    with _lock:
        _interrupt_hooks.append(hook)
    try:
        yield
    finally:
        with _lock:
            _interrupt_hooks.remove(hook)


def handled_signals() -> tuple[int, ...]:
    """The signals our handler is installed for (SIGINT is missing when it was ignored at start)."""
    return tuple(_previous_handlers)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _interrupted
    if _interrupted is None:
        _interrupted = signum
    kill_all()
    with _lock:
        hooks = list(_interrupt_hooks)
    if hooks:
        for hook in hooks:
            hook(signum)
        return
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
            if previous == signal.SIG_IGN:
                # Ignored when we started (Python keeps an inherited SIG_IGN for SIGINT instead of installing
                # default_int_handler): keep it ignored, for QEMU's sake as well.
                continue
            signal.signal(signum, _on_signal)
        except (ValueError, OSError):
            continue
        _previous_handlers[signum] = previous
