"""Write guest-physical memory of a running QEMU from the host, through QEMU's own gdbstub.

Why: proving that the memory check can fail needs a page changed behind the guest's back. QMP and HMP can read
guest memory (pmemsave, xp) but not write it. The gdbstub can, in physical-address mode
(``Qqemu.PhyMemMode:1``, QEMU >= 4.1), and it is started at run time with HMP ``gdbserver``, so the VM needs no
special configuration. (A ``memory-backend-file,share=on`` destination written through the file also works, but
changes the VM under test.)

Connecting the debugger stops the VM; detaching resumes it. So a poke is atomic for the guest.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness.errors import GuestError


class GdbError(GuestError):
    """The gdbstub refused or did not answer; the message says which packet."""


class _Gdb:
    """The few packets of the GDB remote protocol that a memory write needs."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _read_byte(self) -> int:
        if not self._buffer:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise GdbError("gdbstub closed the connection")
            self._buffer = chunk
        byte, self._buffer = self._buffer[0], self._buffer[1:]
        return byte

    def command(self, payload: str) -> str:
        checksum = sum(payload.encode()) % 256
        self._sock.sendall(f"${payload}#{checksum:02x}".encode())
        while True:
            reply = self._packet()
            # QEMU 7.2 announces the stop that connecting caused ("T02thread:01;") unasked; it is not our answer.
            if not (reply[:1] in ("T", "S") and reply[1:3].isalnum() and payload != "?"):
                return reply

    def _packet(self) -> str:
        # Skip the '+' acknowledgement (and anything else) up to the reply packet, then acknowledge it.
        while self._read_byte() != ord("$"):
            pass
        reply = bytearray()
        while (byte := self._read_byte()) != ord("#"):
            reply.append(byte)
        self._read_byte()
        self._read_byte()
        self._sock.sendall(b"+")
        return reply.decode(errors="replace")

    def checked(self, payload: str) -> None:
        reply = self.command(payload)
        if reply != "OK":
            raise GdbError(f"gdbstub answered {reply!r} to {payload[:40]!r}")


def write_physical(gdb_socket: Path, gpa: int, data: bytes, timeout: float = 10.0) -> None:
    """Write ``data`` at guest-physical address ``gpa`` through a gdbstub listening on ``gdb_socket``."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(gdb_socket))
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise GdbError(f"no gdbstub at {gdb_socket}: {exc}") from exc
            time.sleep(0.05)
    sock.settimeout(timeout)
    with sock:
        gdb = _Gdb(sock)
        gdb.checked("Qqemu.PhyMemMode:1")
        gdb.checked(f"M{gpa:x},{len(data):x}:{data.hex()}")
        gdb.checked("Qqemu.PhyMemMode:0")
        # Detach: the VM runs again.
        gdb.command("D")


async def poke_guest_memory(hmp: Callable[[str], Awaitable[Any]], gdb_socket: Path, gpa: int, data: bytes) -> None:
    """Start a gdbstub with ``hmp`` (a function running one HMP command line), then write the bytes."""
    import asyncio

    await hmp(f"gdbserver unix:{gdb_socket},server=on,wait=off")
    await asyncio.to_thread(write_physical, gdb_socket, gpa, data)
    await hmp("gdbserver none")
