"""What the driver costs: one complete precopy scenario through harness.pair vs the bare qemu.qmp script.

Each repetition runs, alternately, the driver (MigrationPair: two launches, QMP, events on, tcp migration
of a paused 256 MiB VM, waits on both sides, teardown) and benchmarks/baseline_pair.py doing the same
QMP steps with nothing else. Printed: the median of each, and their ratio (target: <= 1.2, and <= 0.5 s
per scenario). ``--accel both`` also answers "does KVM help here?" (on a PVM host it does not: see
harness.probe.choose_accel).

    .venv/bin/python benchmarks/pair.py [-n 10] [--qemu PATH]... [--accel tcg|kvm|both]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline_pair import VM_ARGS, baseline_once
from harness.binaries import QemuBinary, discover_binaries, load_binary
from harness.pair import MigrationPair

KVM_CPU = "host,-arch-capabilities"  # what harness.probe finds works on this PVM host


def accel_args(accel: str) -> list[str]:
    return ["-accel", accel, *(["-cpu", KVM_CPU] if accel == "kvm" else [])]


async def driver_once(binary: QemuBinary, accel: str) -> float:
    started = time.monotonic()
    args = [*VM_ARGS, *accel_args(accel)]
    async with MigrationPair(binary, args, args) as pair:
        for side in ("source", "destination"):
            await pair.set_capabilities(side, {"events": True})
        await pair.migrate("tcp")
        assert await pair.wait_source_end(30) == "completed"
        assert await pair.wait_destination_end(30) == "completed"
    return time.monotonic() - started


async def measure(binary: QemuBinary, accel: str, repetitions: int) -> tuple[list[float], list[float]]:
    program = [binary.path, *binary.extra_args]
    driver: list[float] = []
    bare: list[float] = []
    await driver_once(binary, accel)  # warm-up: page cache, the probe-free first launch
    for _ in range(repetitions):
        bare.append(await baseline_once(program, dict(binary.env), accel_args(accel)))
        driver.append(await driver_once(binary, accel))
    return driver, bare


def main() -> int:
    parser = argparse.ArgumentParser(description="driver overhead vs a bare qemu.qmp script")
    parser.add_argument("-n", type=int, default=10, help="repetitions (default 10)")
    parser.add_argument("--qemu", action="append", help="QEMU binary (repeatable; default: the discovered ones)")
    parser.add_argument("--accel", default="tcg", choices=("tcg", "kvm", "both"))
    options = parser.parse_args()
    binaries = [load_binary(p) for p in options.qemu] if options.qemu else discover_binaries()
    accels = ("tcg", "kvm") if options.accel == "both" else (options.accel,)
    print(f"{'QEMU':<8} {'accel':<5} {'driver median':>14} {'bare median':>12} {'ratio':>6}  (n={options.n})")
    for binary in binaries:
        for accel in accels:
            driver, bare = asyncio.run(measure(binary, accel, options.n))
            d, b = statistics.median(driver), statistics.median(bare)
            print(f"{binary.version!s:<8} {accel:<5} {d:>12.3f} s {b:>10.3f} s {d / b:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
