"""The logged command runner of every build recipe, and the one error a failed build step raises.

Why one runner: the guest image, the VFIO lab and the mutant QEMUs each had their own ``subprocess.run``
wrapper, each reporting a failure differently (the last line, 15 lines, 25 lines and a log path). A build
failure is read by a person deciding what to install or fix, so every recipe now says the same things: which
step, the command, its exit status, the end of its output and where the whole output is.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, NoReturn

from harness import errors


class BuildError(errors.BuildError):
    """A build step failed; the message says which step and what to do about it.

    ``argv``, ``exit_status`` and ``log_tail`` are empty for a failure that was not a command (a missing
    package, a file the step expected). Callers (``migconform certify`` building the lab) catch
    :class:`harness.errors.BuildError`, the base of every builder's error.
    """

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        exit_status: int | None = None,
        log_tail: str = "",
        log_path: Path | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.exit_status = exit_status
        self.log_tail = log_tail
        self.log_path = log_path
        super().__init__(message)


class Runner:
    """Runs a recipe's commands and raises the recipe's own :class:`BuildError` subclass when one fails.

    ``log``: a file every command's output is appended to, after a ``$ argv`` line (None: output is kept only
    for the error). ``hint``: what to do when a command is not installed (which set-up script installs it).
    ``tail_lines``: how much of a failed command's output its error carries.
    """

    def __init__(
        self,
        error: type[BuildError] = BuildError,
        *,
        log: Path | None = None,
        hint: str = "",
        tail_lines: int = 15,
    ) -> None:
        self.error = error
        self.log = log
        self.hint = hint
        self.tail_lines = tail_lines

    def query(
        self,
        argv: Sequence[str],
        *,
        what: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Runs a command whose standard output is the answer (apt-cache, gcc --version) and returns it."""
        done = self._call(argv, what, cwd, env, None)
        self._append_log(argv, done.stdout + done.stderr)
        if done.returncode != 0:
            self._fail(argv, what, done.returncode, (done.stderr or done.stdout).decode(errors="replace"), None)
        return done.stdout.decode(errors="replace")

    def run(
        self,
        argv: Sequence[str],
        *,
        what: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        """Runs a build step; its output streams into ``log`` (else the runner's log) so a long step can be
        followed while it runs."""
        log = log or self.log
        if log is None:
            done = self._call(argv, what, cwd, env, None)
            if done.returncode != 0:
                self._fail(argv, what, done.returncode, (done.stdout + done.stderr).decode(errors="replace"), None)
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            start = out.tell()
            done = self._call(argv, what, cwd, env, out)
        if done.returncode != 0:
            with log.open("rb") as out:
                out.seek(start)
                self._fail(argv, what, done.returncode, out.read().decode(errors="replace"), log)

    def _call(
        self,
        argv: Sequence[str],
        what: str,
        cwd: Path | None,
        env: Mapping[str, str] | None,
        out: IO[bytes] | None,
    ) -> subprocess.CompletedProcess[bytes]:
        environ = None if env is None else dict(env)
        try:
            if out is None:
                return subprocess.run(list(argv), cwd=cwd, env=environ, capture_output=True, check=False)
            return subprocess.run(list(argv), cwd=cwd, env=environ, stdout=out, stderr=subprocess.STDOUT, check=False)
        except FileNotFoundError as exc:
            hint = f" ({self.hint})" if self.hint else ""
            raise self.error(f"{what}: {argv[0]} not found{hint}", argv=argv) from exc

    def _append_log(self, argv: Sequence[str], output: bytes) -> None:
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("ab") as out:
                out.write(f"$ {' '.join(argv)}\n".encode() + output + b"\n")

    def _fail(self, argv: Sequence[str], what: str, status: int, output: str, log: Path | None) -> NoReturn:
        tail = "\n".join(output.strip().splitlines()[-self.tail_lines :])
        where = f"; full log: {log}" if log is not None else ""
        message = f"{what}: `{' '.join(argv)}` failed with exit status {status}{where}"
        raise self.error(
            f"{message}:\n{tail}" if tail else message, argv=argv, exit_status=status, log_tail=tail, log_path=log
        )
