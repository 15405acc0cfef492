"""What the executor calls to run a real guest across a migration: QEMU arguments, start, and the after-check.

A scenario's ``[guest]`` table (proposed; see docs/guests.md) becomes a :class:`GuestSpec`. The executor adds
:func:`guest_vm_args` to both VMs' command lines, calls :func:`start` on the source's console before it migrates,
and :func:`verify` on the destination's console once the migration has ended. The verdict of the memory check
is the workload's own: it knows exactly what every page must hold (images/guest/memload.c), so no state has to
be carried from the source to the check.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import GuestCheckError
from harness.guest.console import ConsoleError, GuestConsole
from harness.guest.image import GuestImage

# The spec is plain data of the scenario (the model carries it too); re-exported here for the guest's users.
from reference_impl.guest_spec import GuestSpec as GuestSpec
from reference_impl.guest_spec import parse_mib as parse_mib

SIDES = ("source", "destination")
_VERIFY = re.compile(
    r"pages_checked=(\d+) bad_pages=(\d+) first_bad=(\w+) torn=(\d+) stale=(\d+) future=(\d+) generation=(\d+)"
)
_GENERATION = re.compile(r"generation=(\d+)")
_GPA = re.compile(r"page=(\w+) gpa=(0x[0-9a-f]+)")
_CONSOLE_CHARDEV_ID = "mc-serial"
_RAM_BACKEND_ID = "mc-ram"


@dataclass(frozen=True)
class GuestReport:
    """The destination guest after the migration: did it answer, and what did the memory check find."""

    alive: bool
    pages_checked: int = 0
    bad_pages: int = 0
    first_bad: int | None = None
    torn: int = 0
    stale: int = 0
    future: int = 0
    generation: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.alive and self.pages_checked > 0 and self.bad_pages == 0


def guest_vm_args(
    image: GuestImage,
    guest_spec: GuestSpec,
    side: str,
    *,
    console_socket: Path,
    ram_file: Path | None = None,
    ram_size: str | None = None,
) -> list[str]:
    """QEMU arguments for one side.

    Both sides get the same -kernel/-initrd/-append: QEMU builds the linuxboot option ROM and fw_cfg from them,
    and the destination's ROM/RAM layout must match the source's for the stream to load. The destination never
    boots that kernel (it is overwritten by the incoming state). The console is a Unix socket served by QEMU.

    ram_file (optional, either side) puts guest RAM in a shared file (``memory-backend-file,share=on``) so a test
    can write guest memory from the host; ram_size must then equal the VM's -m. The backend has the same id on
    both sides whatever its kind, so a file-backed destination accepts a RAM-backed source's stream.
    """
    if side not in SIDES:
        raise ValueError(f"side {side!r}: expected one of {', '.join(SIDES)}")
    if guest_spec.image != "default":
        raise ValueError(f"guest image {guest_spec.image!r} is not supported")
    args = [
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", image.cmdline,
        "-chardev", f"socket,id={_CONSOLE_CHARDEV_ID},path={console_socket},server=on,wait=off",
        "-serial", f"chardev:{_CONSOLE_CHARDEV_ID}",
        # A guest panic (panic=-1 reboots at once) ends QEMU instead of booting again: a dead VM is reported.
        "-no-reboot",
    ]  # fmt: skip
    if ram_file is not None:
        if ram_size is None:
            raise ValueError("ram_file needs ram_size (the VM's -m)")
        args += [
            "-object",
            f"memory-backend-file,id={_RAM_BACKEND_ID},size={ram_size},mem-path={ram_file},share=on",
            "-machine",
            f"memory-backend={_RAM_BACKEND_ID}",
        ]
    elif ram_size is not None:
        args += [
            "-object",
            f"memory-backend-ram,id={_RAM_BACKEND_ID},size={ram_size}",
            "-machine",
            f"memory-backend={_RAM_BACKEND_ID}",
        ]
    return args


# --- blocking forms (tests and benchmarks call these from threads or directly) -------------------------------


def start_blocking(console: GuestConsole, spec: GuestSpec) -> int:
    """Wait for the shell, start the workload, return once every page is filled. Returns the page count."""
    console.wait_for_prompt(timeout=spec.boot_timeout)
    console.check(f"(memload daemon {spec.memory_mib} {spec.dirty_rate} </dev/null >/run/memload.log 2>&1 &)")
    # The daemon creates its command FIFO only after the fill, so `status` succeeding means "filled".
    # Filling runs at roughly 100 MiB/s under TCG on a loaded host; allow for 20 MiB/s.
    fill_timeout = 30.0 + spec.memory_mib / 20.0
    status, output = console.run(
        # pidof: a daemon that died (e.g. more memory asked than the VM has) ends the wait at once.
        "i=0; until memload status >/dev/null 2>&1; do pidof memload >/dev/null || break;"
        " i=$((i+1)); [ $i -gt 3000 ] && break; usleep 100000; done; memload status",
        timeout=fill_timeout,
    )
    if status != 0 or not _GENERATION.search(output):
        log = console.run("cat /run/memload.log")[1]
        raise ConsoleError(f"the workload did not start ({output!r}); its log: {log}")
    return spec.memory_mib * 256


def generation_blocking(console: GuestConsole) -> int:
    """The workload's write count G now (see memload.c): a moment in the guest's memory history."""
    output = console.check("memload status")
    m = _GENERATION.search(output)
    if not m:
        raise ConsoleError(f"memload status gave {output!r}")
    return int(m.group(1))


def page_gpa_blocking(console: GuestConsole, page: int | str) -> int:
    """Guest-physical address of one workload page, or with ``"state"`` of the 8-byte generation counter G
    (from /proc/self/pagemap inside the guest)."""
    output = console.check(f"memload gpa {page}")
    m = _GPA.search(output)
    if not m:
        raise ConsoleError(f"memload gpa gave {output!r}")
    return int(m.group(2), 16)


def verify_blocking(console: GuestConsole, prompt_timeout: float = 20.0, side: str = "destination") -> GuestReport:
    """Ask the workload to check every page. A guest that does not answer is reported (``alive`` False: that
    may well be QEMU's doing), not raised. A guest that answers with something that is not a check of its
    memory (unparsable output, or no page checked) raises :class:`GuestCheckError`: the check examined
    nothing, and "alive, 0 bad pages" would then agree with the model having tested nothing."""
    try:
        console.wait_for_prompt(timeout=prompt_timeout)
        # Checking runs at about the fill speed; the slowest case is a 1 GiB guest on a loaded host.
        status, output = console.run("memload verify", timeout=120.0)
    except ConsoleError as exc:
        return GuestReport(alive=False, detail=str(exc))
    m = _VERIFY.search(output)
    if not m:
        raise GuestCheckError(side, f"memload verify (exit status {status}) gave no result line", output)
    if int(m.group(1)) == 0:
        raise GuestCheckError(side, "memload verify checked no page", output)
    first_bad = None if m.group(3) == "none" else int(m.group(3))
    return GuestReport(
        alive=True,
        pages_checked=int(m.group(1)),
        bad_pages=int(m.group(2)),
        first_bad=first_bad,
        torn=int(m.group(4)),
        stale=int(m.group(5)),
        future=int(m.group(6)),
        generation=int(m.group(7)),
        detail=m.group(0),
    )


# --- the executor's hooks --------------------------------------------------------------------------------------


async def start(console: GuestConsole, spec: GuestSpec | None = None) -> int:
    """Source side, before migrating: boot to the prompt and start the workload writing."""
    return await asyncio.to_thread(start_blocking, console, spec or GuestSpec())


async def verify(console: GuestConsole) -> GuestReport:
    """Destination side, after the migration ended: is the guest alive, and is its memory what it must be."""
    return await asyncio.to_thread(verify_blocking, console)


async def generation(console: GuestConsole) -> int:
    return await asyncio.to_thread(generation_blocking, console)
