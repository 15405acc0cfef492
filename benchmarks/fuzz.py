"""What the fuzzer costs: its steps per second on real QEMU against the raw QMP floor measured in the same run,
and the fraction of its time spent inside the QEMU runs (goal: >= 70%, the rest being hypothesis and the model).

The fuzz part is a FuzzSession (harness.fuzz) for ``--budget`` seconds. Every step it compares is one whole run of
its prefix on a fresh pair, so the floor does the same work with nothing but harness.pair: for each real run the
fuzzer made (a sample of ``--floor-sample`` of them), launch a source/destination pair of the same VMs and send
as many QMP commands (``query-migrate``) as the prefix had steps, then tear the pair down.

    .venv/bin/python benchmarks/fuzz.py [--qemu PATH] [--budget 60] [--seed 1] [--floor-sample 40]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.scenario import Step
from harness.binaries import QemuBinary, discover_binaries, load_binary
from harness.execution.preflight import vm_args
from harness.fuzz.lockstep import Check, LockstepRunner
from harness.fuzz.session import FuzzSession
from harness.fuzz.vocabulary import FUZZ_VM, vocabulary_for
from harness.pair import MigrationPair
from harness.targets import targets_for_binaries


class RecordingRunner(LockstepRunner):
    """The fuzzer's runner, noting each real run's prefix length for the floor."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lengths: list[int] = []

    def check(self, steps: Sequence[Step], *, fresh: bool = False) -> Check:
        runs = self.runs
        result = super().check(steps, fresh=fresh)
        if self.runs > runs:
            self.lengths.append(len(steps))
        return result


async def floor_once(binary: QemuBinary, commands: int) -> None:
    args = vm_args(FUZZ_VM, "tcg", None)
    async with MigrationPair(binary, args, args) as pair:
        for _ in range(commands):
            await pair.source.qmp("query-migrate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qemu", metavar="PATH", help="default: the newest binary found")
    parser.add_argument("--budget", type=float, default=60.0, metavar="S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--floor-sample", type=int, default=40, metavar="N")
    args = parser.parse_args(argv)
    binary = load_binary(args.qemu) if args.qemu else max(discover_binaries(), key=lambda b: b.version)
    (target,) = targets_for_binaries([binary])
    runner = RecordingRunner(target, FUZZ_VM)
    with tempfile.TemporaryDirectory(prefix="mc-fuzz-bench-") as folder:
        session = FuzzSession(
            runner,
            vocabulary_for(binary),
            budget_s=args.budget,
            seed=args.seed,
            found_dir=Path(folder) / "found",
            db_dir=None,
        )
        session.run()
    fuzz_rate = runner.runs / session.seconds if session.seconds else 0.0
    inside = runner.run_seconds / session.seconds if session.seconds else 0.0
    sample = runner.lengths[: args.floor_sample]
    started = time.monotonic()
    for length in sample:
        asyncio.run(floor_once(binary, length))
    floor_seconds = time.monotonic() - started
    floor_rate = len(sample) / floor_seconds if floor_seconds else 0.0
    print(f"QEMU {binary.version} ({binary.path}), seed {args.seed}, budget {args.budget:g} s")
    print(
        f"fuzz:  {runner.runs} steps ({runner.cached} prefixes from the cache) in {session.seconds:.1f} s = "
        f"{fuzz_rate:.2f} steps/s"
    )
    print(
        f"floor: {len(sample)} pairs with {sum(sample)} QMP commands in {floor_seconds:.1f} s = "
        f"{floor_rate:.2f} steps/s (harness.pair alone)"
    )
    if floor_rate:
        print(f"fuzz / floor: {fuzz_rate / floor_rate:.2f}")
    print(f"time inside QEMU runs: {100 * inside:.0f}% (goal >= 70%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
