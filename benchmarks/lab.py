"""What the VFIO lab costs: build (cold and cached), boot to the runner, and the lab scenario set.

- build, cached: ``build()`` when the image for the current inputs exists (apt-cache look-ups + hash);
- build, cold (``--cold``): the same into an empty cache folder, so it includes ``apt-get download`` of
  the kernel packages (about 280 MB), unpacking, compiling the modules and writing both initramfs;
- boot: L1 started with no request runs the runner's smoke check (one L2 QEMU, the postcopy refusal);
  reported are host wall seconds from the L1 QEMU's start to /init starting the runner, to the runner's
  Python being up, and to power-off;
- scenarios: tests/hw/scenarios/ (the lab's end-to-end set) in one batch through the mtty provider:
  host wall seconds for the whole batch (boot included) and each scenario's own duration inside L1.

    .venv/bin/python benchmarks/lab.py [--cold] [--boots 3] [--variant stock|iovabm] [--json FILE]

Numbers depend heavily on host load (L1 and L2 both run under TCG): run it on a quiet machine, and
report the load average printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.binaries import load_binary
from harness.loader import load_scenarios
from harness.vfio.provider import MttyLabProvider
from harness.vfio_lab.boot import boot
from harness.vfio_lab.build import build, lab_cache

SCENARIOS = Path(__file__).resolve().parent.parent / "tests" / "hw" / "scenarios"
HOST_QEMU = "/usr/bin/qemu-system-x86_64"


def timed_build(cache: str | None) -> tuple[float, str]:
    previous = os.environ.get("MIGCONFORM_CACHE")
    if cache is not None:
        os.environ["MIGCONFORM_CACHE"] = cache
    try:
        started = time.monotonic()
        image = build()
        return time.monotonic() - started, image.directory
    finally:
        if cache is not None:
            if previous is None:
                os.environ.pop("MIGCONFORM_CACHE", None)
            else:
                os.environ["MIGCONFORM_CACHE"] = previous


async def smoke_boot(variant: str) -> dict[str, Any]:
    image = build()
    runs = lab_cache() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    share = Path(tempfile.mkdtemp(prefix="bench-", dir=runs))
    result = await boot(image, variant, share, timeout=180)
    smoke = json.loads((share / "smoke.json").read_text()) if (share / "smoke.json").exists() else {}
    return {
        "runner_start_s": result.runner_start_s,
        "runner_ready_s": result.runner_ready_s,
        "total_s": result.total_s,
        "accel": result.accel.accel,
        "smoke_error": smoke.get("migrate_error"),
    }


async def scenario_set(variant: str) -> dict[str, Any]:
    provider = MttyLabProvider(variant)
    scenarios = load_scenarios([SCENARIOS])
    binary = load_binary(HOST_QEMU)
    started = time.monotonic()
    outcomes = await provider.run_batch(scenarios, [binary])
    total = time.monotonic() - started
    boot_result = provider.last_boot
    return {
        "scenarios": len(scenarios),
        "batch_wall_s": round(total, 2),
        "runner_ready_s": boot_result.runner_ready_s if boot_result else None,
        "per_scenario_s": {o.scenario: o.duration_s for o in outcomes},
        "verdicts": {o.scenario: o.verdict for o in outcomes},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cold", action="store_true", help="also time a build into an empty cache folder")
    parser.add_argument("--boots", type=int, default=3, help="smoke boots to time (default 3)")
    parser.add_argument("--variant", default="stock", choices=("stock", "iovabm"))
    parser.add_argument("--no-scenarios", action="store_true", help="skip the scenario set")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    results: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="lab-cold-", dir=lab_cache().parent) as cold:
            seconds, _ = timed_build(cold)
            results["build_cold_s"] = round(seconds, 2)
    timed_build(None)  # make sure the image exists before timing the cached path
    results["build_cached_s"] = round(timed_build(None)[0], 2)
    boots = [asyncio.run(smoke_boot(args.variant)) for _ in range(args.boots)]
    results["boots"] = boots
    for key in ("runner_start_s", "runner_ready_s", "total_s"):
        values = [b[key] for b in boots if b[key] is not None]
        if values:
            results[f"boot_{key}_median"] = statistics.median(values)
    if not args.no_scenarios:
        results["scenario_set"] = asyncio.run(scenario_set(args.variant))
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
