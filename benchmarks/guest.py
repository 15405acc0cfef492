"""Migration figures for a 1 GiB guest under load: precopy vs postcopy through harness.guest, and a bare script.

Three runs per QEMU binary, in one process so they share the machine's load:
  baseline  the same precopy migration driven by nothing but subprocess, qemu.qmp and a raw console socket
            (no harness.machine, no pexpect): what QEMU itself takes, so the harness's runs can be compared;
  precopy   harness.guest: boot, workload writing, precopy, memory check on the destination;
  postcopy  the same, switched to postcopy as soon as the migration is active.
Printed: total time, downtime, setup time, throughput (query-migrate's ram.mbps), passes (dirty-sync-count),
postcopy page requests, and ratios (harness precopy / baseline, postcopy / precopy). Timing lives here, never in
tests.

    .venv/bin/python benchmarks/guest.py [--qemu PATH]... [--vm-memory 1G] [--memory 512M] [--rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qemu.qmp import QMPClient

from harness import procutil
from harness.binaries import QemuBinary, discover_binaries, load_binary
from harness.guest.console import ConsoleError
from harness.guest.image import PROMPT, GuestImage, build_image
from harness.guest.lab import ENDED, GuestLab, guest_accel, set_capabilities, wait_status
from harness.guest.session import GuestSpec, guest_vm_args, start, verify

MAX_BANDWIDTH = 8 << 30  # far above what loopback does: the transport, not the limit, sets the pace
MIGRATION_TIMEOUT = 300.0


def _figures(info: dict[str, Any], wall: float) -> dict[str, Any]:
    ram = info.get("ram", {})
    return {
        "status": info.get("status"),
        "total_ms": info.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_ms": info.get("setup-time"),
        "mbps": round(float(ram.get("mbps", 0.0)), 1),
        "transferred_mib": round(ram.get("transferred", 0) / (1 << 20), 1),
        "passes": ram.get("dirty-sync-count"),
        "postcopy_requests": ram.get("postcopy-requests", 0),
        "wall_s": round(wall, 2),
    }


# --------------------------------------------------------------------------------------------- bare baseline


async def _bare_vm(binary: QemuBinary, args: list[str], qmp_path: Path) -> tuple[subprocess.Popen[bytes], QMPClient]:
    client = QMPClient(qmp_path.name)
    await client.start_server(str(qmp_path))
    proc = subprocess.Popen(
        binary.argv(
            "-nodefaults", "-display", "none",
            "-chardev", f"socket,id=q,path={qmp_path}", "-mon", "chardev=q,mode=control",
            *args,
        ),
        env=binary.environ(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # The one safety net kept even here: the QEMU dies with this process.
        start_new_session=True, preexec_fn=procutil.child_preexec(os.getpid()),
    )  # fmt: skip
    await asyncio.wait_for(client.accept(), 30)
    return proc, client


def _bare_console_start(path: Path, command: str, timeout: float) -> None:
    """Press Enter until the prompt shows, type the command, wait until the next prompt."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sock.settimeout(1.0)
    seen = b""
    with sock:
        while PROMPT.encode() not in seen:
            if time.monotonic() > deadline:
                raise TimeoutError("baseline guest: no prompt")
            sock.sendall(b"\r")
            with contextlib.suppress(TimeoutError):
                seen += sock.recv(65536)
        sock.sendall(command.encode() + b"\r")
        seen = b""
        while seen.count(PROMPT.encode()) < 1 or b"generation=" not in seen:
            if time.monotonic() > deadline:
                raise TimeoutError("baseline guest: workload did not start")
            with contextlib.suppress(TimeoutError):
                seen += sock.recv(65536)


async def baseline(binary: QemuBinary, image: GuestImage, spec: GuestSpec, vm_memory: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[QMPClient] = []
    try:
        accel = list(guest_accel(binary)[0])

        def vm_args(side: str) -> list[str]:
            console = work / f"{side}.console"
            return [*accel, "-machine", "q35", "-m", vm_memory,
                    *guest_vm_args(image, spec, side, console_socket=console, ram_size=vm_memory)]  # fmt: skip

        src, src_qmp = await _bare_vm(binary, vm_args("source"), work / "s.qmp")
        dst, dst_qmp = await _bare_vm(binary, [*vm_args("destination"), "-incoming", "defer"], work / "d.qmp")
        procs += [src, dst]
        clients += [src_qmp, dst_qmp]
        command = (
            f"(memload daemon {spec.memory_mib} {spec.dirty_rate} </dev/null >/dev/null 2>&1 &);"
            " until memload status 2>/dev/null; do usleep 100000; done"
        )
        await asyncio.to_thread(_bare_console_start, work / "source.console", command, 300)
        await src_qmp.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        uri = f"unix:{work}/migration.sock"
        await dst_qmp.execute("migrate-incoming", {"uri": uri})
        started = time.monotonic()
        await src_qmp.execute("migrate", {"uri": uri})
        while True:
            info: dict[str, Any] = await src_qmp.execute("query-migrate")  # type: ignore[assignment]
            if info.get("status") in ENDED:
                break
            await asyncio.sleep(0.05)
        return _figures(info, time.monotonic() - started)
    finally:
        for client in clients:
            # A QEMU that has already exited (a destination whose guest panicked) ends its QMP with EOF.
            with contextlib.suppress(Exception):
                await client.disconnect()
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


# -------------------------------------------------------------------------------------------- through harness


async def harness_run(
    binary: QemuBinary, image: GuestImage, spec: GuestSpec, vm_memory: str, mode: str
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    lab = GuestLab(binary, image, spec, work, vm_memory=vm_memory)
    try:
        src = await lab.launch("source", "source")
        dst = await lab.launch("destination", "destination", incoming=True)
        await start(await src.console(), spec)
        await set_capabilities(src.machine, events=True)
        if mode == "postcopy":
            for vm in (src.machine, dst.machine):
                await set_capabilities(vm, postcopy_ram=True)
        await src.machine.qmp("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        uri = f"unix:{work}/migration.sock"
        await dst.machine.qmp("migrate-incoming", uri=uri)
        started = time.monotonic()
        await src.machine.qmp("migrate", uri=uri)
        if mode == "postcopy":
            # Switch as soon as precopy is under way: at this bandwidth precopy converges within a second or two,
            # so waiting for the end of a pass would often mean no postcopy at all. Everything not yet sent
            # is then pushed in the background or faulted in by the running destination.
            await wait_status(src.machine, ("active", *ENDED), 60)
            await src.machine.qmp("migrate-start-postcopy")
        final = await wait_status(src.machine, ENDED, MIGRATION_TIMEOUT)
        figures = _figures(final, time.monotonic() - started)
        figures["statuses"] = "/".join(dict.fromkeys(src.machine.migration_events()))
        try:
            report = await verify(await dst.console())
            figures["guest"], figures["guest_ok"] = report.detail, report.ok
        except ConsoleError as exc:
            figures["guest"], figures["guest_ok"] = f"no answer: {exc}", False
        return figures
    finally:
        await lab.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def _ratio(a: Any, b: Any) -> str:
    try:
        return f"{float(a) / float(b):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


NUMERIC = ("total_ms", "downtime_ms", "setup_ms", "mbps", "transferred_mib", "passes", "postcopy_requests", "wall_s")


def _median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-figure medians over repetitions (the machine is shared: one sample says little)."""
    out = dict(samples[-1])
    for key in NUMERIC:
        values = [s[key] for s in samples if isinstance(s.get(key), int | float)]
        out[key] = statistics.median(values) if values else None
    out["status"] = "/".join(sorted({str(s.get("status")) for s in samples}))
    out["guest_ok"] = all(s.get("guest_ok", True) for s in samples)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qemu", action="append", default=[], help="QEMU binary (repeatable; default: all found)")
    parser.add_argument("--vm-memory", default="1G")
    parser.add_argument("--memory", default="512M", help="what the workload fills and rewrites")
    parser.add_argument("--rate", type=int, default=5000, help="pages the workload rewrites per second")
    parser.add_argument("-n", "--repeat", type=int, default=1, help="repetitions (medians are printed)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    binaries = [load_binary(p) for p in args.qemu] if args.qemu else discover_binaries()
    image = build_image()
    spec = GuestSpec(memory=args.memory, dirty_rate=args.rate, boot_timeout=120)
    results: dict[str, dict[str, Any]] = {}
    for binary in binaries:
        print(f"== {binary} ({guest_accel(binary)[1]})", flush=True)
        samples: dict[str, list[dict[str, Any]]] = {"baseline": [], "precopy": [], "postcopy": []}
        for _ in range(args.repeat):  # interleaved, so a burst of load from elsewhere hits all three alike
            samples["baseline"].append(asyncio.run(baseline(binary, image, spec, args.vm_memory)))
            for mode in ("precopy", "postcopy"):
                samples[mode].append(asyncio.run(harness_run(binary, image, spec, args.vm_memory, mode)))
        runs = {name: _median(values) for name, values in samples.items()}
        keys = ("status", *NUMERIC)
        print(f"{'median of ' + str(args.repeat):14}" + "".join(f"{k:>18}" for k in keys))
        for name, figures in runs.items():
            print(f"{name:14}" + "".join(f"{figures.get(k)!s:>18}" for k in keys))
        for name in ("precopy", "postcopy"):
            print(f"{name}: source statuses {runs[name]['statuses']}; guest check (last): {runs[name]['guest']}")
        pre, post, base = runs["precopy"], runs["postcopy"], runs["baseline"]
        print(
            f"ratios: precopy/baseline total {_ratio(pre['total_ms'], base['total_ms'])}, "
            f"downtime {_ratio(pre['downtime_ms'], base['downtime_ms'])}; "
            f"postcopy/precopy total {_ratio(post['total_ms'], pre['total_ms'])}, "
            f"downtime {_ratio(post['downtime_ms'], pre['downtime_ms'])}, "
            f"throughput {_ratio(post['mbps'], pre['mbps'])}",
            flush=True,
        )
        results[binary.version_text] = {"median": runs, "samples": samples}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = all(r["median"][m]["guest_ok"] for r in results.values() for m in ("precopy", "postcopy"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
