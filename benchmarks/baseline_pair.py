"""The bare baseline for benchmarks/pair.py: one precopy migration with nothing but qemu.qmp and subprocess.

The same QMP steps the driver takes (QMP over a Unix socket we listen on, events capability, tcp
migrate-incoming on port 0, migrate, wait for completed on both sides, quit), written the shortest way,
with none of the driver's safety nets (no process group, no PDEATHSIG, no registry, no log files, no
error mapping). Their difference is the driver's overhead.

Run alone: ``python benchmarks/baseline_pair.py [QEMU] [--accel tcg|kvm]`` prints one duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient

VM_ARGS = ["-machine", "q35", "-m", "256M", "-S"]


async def _launch(
    program: Sequence[str], env: Mapping[str, str], args: Sequence[str], sock: Path
) -> tuple[subprocess.Popen[bytes], QMPClient, EventListener]:
    client = QMPClient(sock.name)
    listener = EventListener("MIGRATION")
    client.register_listener(listener)
    await client.start_server(str(sock))
    proc = subprocess.Popen(
        [
            *program,
            "-nodefaults",
            "-display",
            "none",
            "-chardev",
            f"socket,id=q,path={sock}",
            "-mon",
            "chardev=q,mode=control",
            *args,
        ],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.wait_for(client.accept(), 20)
    await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    return proc, client, listener


async def _until(listener: EventListener, status: str) -> None:
    while True:
        event: Any = await asyncio.wait_for(listener.get(), 30)
        seen = event["data"]["status"]
        if seen in (status, "failed", "cancelled"):
            assert seen == status, event
            return


async def baseline_once(
    program: Sequence[str], env: Mapping[str, str] | None = None, accel_args: Sequence[str] = ("-accel", "tcg")
) -> float:
    """Seconds for: launch source + destination, migrate over tcp, both completed, both quit."""
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    env = env or {}
    try:
        src, src_qmp, src_events = await _launch(program, env, [*VM_ARGS, *accel_args], folder / "s.qmp")
        dst, dst_qmp, dst_events = await _launch(
            program, env, [*VM_ARGS, *accel_args, "-incoming", "defer"], folder / "d.qmp"
        )
        await dst_qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        info: Any = await dst_qmp.execute("query-migrate")
        port = info["socket-address"][0]["port"]
        await src_qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        await _until(src_events, "completed")
        await _until(dst_events, "completed")
        for proc, qmp in ((src, src_qmp), (dst, dst_qmp)):
            await qmp.execute("quit")
            with contextlib.suppress(EOFError):  # QEMU hangs up on quit
                await qmp.disconnect()
            await asyncio.to_thread(proc.wait, 10)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("qemu", nargs="?", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    parser.add_argument("--accel", default="tcg", choices=("tcg", "kvm"))
    options = parser.parse_args()
    accel = ["-accel", options.accel] + (["-cpu", "host,-arch-capabilities"] if options.accel == "kvm" else [])
    print(f"{asyncio.run(baseline_once([options.qemu], {}, accel)):.3f} s")


if __name__ == "__main__":
    main()
