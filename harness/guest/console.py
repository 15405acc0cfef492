"""The guest's serial console, driven with pexpect over QEMU's Unix-socket chardev.

Why a Unix socket and pexpect.fdpexpect: QEMU serves the console itself (``-chardev socket,server=on,wait=off``),
so no helper program (socat, a pty bridge) has to be started, watched and ended; the harness just connects.
``wait=off`` lets QEMU run before anyone connects, and what the guest prints meanwhile is dropped, so the console
asks for a fresh prompt instead of waiting for one. Every wait here is bounded, and a failure message carries the
end of the transcript, which is usually what explains it (a kernel panic, a shell error).
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from types import TracebackType

import pexpect
import pexpect.fdpexpect

from harness.errors import GuestError
from harness.guest.image import PROMPT

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STATUS = re.compile(r"__mc_rc=(\d+)")
_MARKER_SOURCE = "echo __mc_rc=$?"
_TRANSCRIPT_LIMIT = 64 * 1024


class ConsoleError(GuestError):
    """The guest did not answer as expected; the message ends with what the console showed last."""


class GuestConsole:
    """A connected serial console: :meth:`run` a shell command and get its output and exit status."""

    def __init__(self, sock: socket.socket, default_timeout: float = 10.0) -> None:
        self._sock = sock
        self._transcript: list[str] = []
        self.default_timeout = default_timeout
        self._child = pexpect.fdpexpect.fdspawn(
            sock.fileno(), encoding="utf-8", codec_errors="replace", timeout=default_timeout
        )
        self._child.logfile_read = _TranscriptWriter(self._transcript)

    @classmethod
    def connect(cls, path: Path, timeout: float = 10.0) -> GuestConsole:
        """Connect to QEMU's console socket, waiting (bounded) for QEMU to create it."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise ConsoleError(f"no guest console at {path} after {timeout:.0f} s: {exc}") from exc
                time.sleep(0.05)

    @property
    def transcript(self) -> str:
        """Everything the guest printed since connecting (the last 64 KiB), escape sequences removed."""
        return _ANSI.sub("", "".join(self._transcript))

    def _fail(self, what: str) -> ConsoleError:
        tail = self.transcript[-1500:]
        return ConsoleError(f"{what}; console transcript ends with:\n{tail}")

    def wait_for_prompt(self, timeout: float = 30.0) -> None:
        """Wait until the shell answers: press Enter every second until the prompt comes back."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._child.send("\r")
            except OSError:
                raise self._fail("console closed (QEMU gone?) while waiting for the prompt") from None
            remaining = deadline - time.monotonic()
            try:
                self._child.expect_exact(PROMPT, timeout=max(0.1, min(1.0, remaining)))
            except pexpect.TIMEOUT:
                if time.monotonic() >= deadline:
                    raise self._fail(f"no shell prompt within {timeout:.0f} s") from None
                continue
            except (pexpect.EOF, OSError):
                raise self._fail("console closed (QEMU gone?) while waiting for the prompt") from None
            # Several Enters may have queued several prompts; drain them so the next command starts clean.
            while True:
                try:
                    self._child.expect_exact(PROMPT, timeout=0.3)
                except (pexpect.TIMEOUT, pexpect.EOF, OSError):
                    return

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """Run one shell command; return its exit status and output (the echo of the command removed).

        The status is printed after a marker that the echoed command line cannot match (it holds ``$?``,
        not digits), so output and echo are never confused.
        """
        wait = self.default_timeout if timeout is None else timeout
        try:
            self._child.sendline(f"{command}; {_MARKER_SOURCE}")
            self._child.expect(_STATUS, timeout=wait)
            before = str(self._child.before)
            status = int(self._child.match.group(1))
            self._child.expect_exact(PROMPT, timeout=wait)
        except pexpect.TIMEOUT:
            raise self._fail(f"`{command}` did not finish within {wait:.0f} s") from None
        except (pexpect.EOF, OSError):
            raise self._fail(f"console closed (QEMU gone?) while running `{command}`") from None
        text = _ANSI.sub("", before).replace("\r", "")
        # Drop the shell's echo of the command line, which ends with the marker's source text.
        echo_end = text.find(_MARKER_SOURCE)
        text = text[echo_end + len(_MARKER_SOURCE) :] if echo_end >= 0 else text.partition("\n")[2]
        output = "\n".join(line for line in text.split("\n") if line.strip())
        return status, output

    def check(self, command: str, timeout: float | None = None) -> str:
        """Like :meth:`run`, but a non-zero exit status is an error."""
        status, output = self.run(command, timeout)
        if status != 0:
            raise self._fail(f"`{command}` exited with status {status}: {output}")
        return output

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> GuestConsole:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _TranscriptWriter:
    """pexpect's logfile interface, keeping a bounded transcript in memory."""

    def __init__(self, chunks: list[str]) -> None:
        self._chunks = chunks
        self._size = 0

    def write(self, data: str) -> None:
        self._chunks.append(data)
        self._size += len(data)
        while self._size > _TRANSCRIPT_LIMIT and len(self._chunks) > 1:
            self._size -= len(self._chunks.pop(0))

    def flush(self) -> None:
        pass
