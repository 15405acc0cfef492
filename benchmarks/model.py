"""Predictions per second of the reference model on one core, for a typical scenario.

Run: ``.venv/bin/python benchmarks/model.py [--seconds S]``. Prints two figures: "warm" predicts the same
Scenario object repeatedly (the harness's case: one scenario, many versions/hosts; the parse and step
expansion are cached per object), "cold" builds a fresh Scenario each time (nothing cached but the profile
tables). The target is >= 50,000 warm predictions/s.
"""

from __future__ import annotations

import argparse
import time

from contract.host import HostFacts
from contract.scenario import MigrationSpec, Scenario, VmSpec
from reference_impl import predict


def typical_scenario() -> Scenario:
    """A postcopy migration with events on, one emulated NIC on each side: tcp, caps on both sides."""
    vm = VmSpec(args=("-device", "virtio-net-pci,id=net0"))
    return Scenario(
        id="typical",
        source=vm,
        destination=vm,
        migration=MigrationSpec(capabilities={"postcopy-ram": True, "events": True}, mode="postcopy"),
    )


def rate(seconds: float, *, fresh: bool) -> tuple[float, float]:
    """(predictions per wall-clock second, per CPU second of this process).

    The CPU figure is the one-core rate even on a busy machine; the wall figure drops with other load.
    """
    host = HostFacts()
    scenario = typical_scenario()
    count = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            predict(typical_scenario() if fresh else scenario, "10.0", host)
        count += 1000
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start), count / (time.process_time() - cpu_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    args = parser.parse_args()
    for label, fresh in (("warm", False), ("cold", True)):
        wall, cpu = rate(args.seconds, fresh=fresh)
        print(f"{label}: {cpu:,.0f} predictions per CPU-second on one core ({wall:,.0f} per wall-clock second)")
    print("target: >= 50,000 warm predictions per CPU-second")


if __name__ == "__main__":
    main()
