"""Wall time of the bundled suite: real QEMU + model with --jobs 1 and --jobs 2, and the model alone.

Times are printed as ratios against the --jobs 1 run measured in the same invocation (absolute times
depend on the machine and on what else runs on it, ratios much less).

    .venv/bin/python benchmarks/suite.py [--suite DIR] [--qemu BINARY]... [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contract.scenario import Scenario  # noqa: E402
from harness.binaries import discover_binaries, load_binary  # noqa: E402
from harness.loader import load_scenarios  # noqa: E402
from harness.results import Results  # noqa: E402
from harness.runner import RunOptions, run_sync  # noqa: E402
from harness.suite import SUITE_DIR  # noqa: E402
from harness.targets import Target, targets_for_binaries  # noqa: E402


def measure(
    label: str, run: RunOptions, scenarios: list[Scenario], targets: list[Target]
) -> tuple[str, float, Results]:
    started = time.monotonic()
    results = run_sync(scenarios, targets, run)
    return label, time.monotonic() - started, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=SUITE_DIR)
    parser.add_argument("--qemu", action="append", default=[], metavar="BINARY")
    parser.add_argument("--limit", type=int, help="only the first N scenarios (a quicker, rougher measurement)")
    args = parser.parse_args(argv)

    scenarios = load_scenarios([args.suite])
    if args.limit:
        scenarios = scenarios[: args.limit]
    binaries = [load_binary(p) for p in args.qemu] if args.qemu else discover_binaries()
    if not binaries:
        print("no QEMU binary found", file=sys.stderr)
        return 2
    targets = targets_for_binaries(binaries)
    print(f"{len(scenarios)} scenarios x {len(targets)} binaries ({', '.join(t.column for t in targets)})")

    runs = [
        measure("qemu+model, --jobs 1", RunOptions(backend="both", jobs=1), scenarios, targets),
        measure("qemu+model, --jobs 2", RunOptions(backend="both", jobs=2), scenarios, targets),
        measure("model alone", RunOptions(backend="reference", jobs=1), scenarios, targets),
    ]
    baseline = runs[0][1]
    print(f"{'run':<24} {'wall s':>8} {'ratio':>7}  result")
    for label, seconds, results in runs:
        counts = ", ".join(f"{v} {k}" for k, v in results.counts().items() if v)
        print(f"{label:<24} {seconds:8.2f} {seconds / baseline:7.4f}  {counts or 'single-backend outcomes only'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
