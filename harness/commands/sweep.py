"""``migconform sweep``: every capability set of a size, generated per binary, model against QEMU."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from harness import procutil
from harness import results as results_io
from harness.commands.outputs import check_writable, write_reports
from harness.commands.run import qemu_binaries
from harness.commands.usage import shard_option
from harness.errors import UsageError
from harness.results import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_PASSED, Results
from harness.runner import RunOptions, run_sync
from harness.targets import targets_for_binaries


def _exit_status(results: Sequence[Results]) -> int:
    """1 beats 3 beats 0: a divergence or harness failure is never hidden behind a host failure."""
    statuses = {r.exit_status for r in results}
    for status in (EXIT_FAILED, EXIT_ENVIRONMENT):
        if status in statuses:
            return status
    return EXIT_PASSED


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.sweep import SweepError, binary_capabilities, sweep_scenarios

    transports = [t for t in args.transports.split(",") if t]
    modes = [m for m in args.modes.split(",") if m]
    for value, allowed, flag in (
        (transports, ("tcp", "unix", "file", "exec"), "--transports"),
        (modes, ("precopy", "postcopy", "background-snapshot"), "--modes"),
    ):
        for item in value:
            if item not in allowed:
                raise UsageError(f"{flag}: unknown {item!r} (allowed: {', '.join(allowed)})")
    for path, flag in ((args.json, "--json"), (args.html, "--html")):
        if path is not None:
            check_writable(path, flag)
    parts: list[Results] = []
    for target in targets_for_binaries(qemu_binaries(args.qemu)):
        assert target.binary is not None
        try:
            caps = binary_capabilities(target.binary)
        except SweepError as exc:
            raise UsageError(str(exc)) from None
        scenarios = sweep_scenarios(caps, size=args.size, transports=transports, modes=modes)
        scenarios = shard_option(args.shard, scenarios)
        if args.limit:
            scenarios = scenarios[: args.limit]
        started = time.monotonic()
        if not args.quiet:
            sys.stderr.write(f"sweep {target.column}: {len(caps)} capabilities, {len(scenarios)} scenarios\n")
        options = RunOptions(
            backend=args.backend,
            jobs=args.jobs,
            timeout=args.timeout,
            progress=None if args.quiet else sys.stderr,
            meta={"argv": sys.argv[1:], "sweep_size": args.size},
        )
        part = run_sync(scenarios, [target], options)
        part.meta["sweep_seconds"] = round(time.monotonic() - started, 1)
        parts.append(part)
        if procutil.interrupted() is not None:
            break  # the run's signal policy: stop, write what we have, exit 128 + signal
        if not args.quiet:
            counts = part.counts()
            sys.stderr.write(
                f"sweep {target.column}: {len(scenarios)} scenarios in {part.meta['sweep_seconds']} s: "
                + ", ".join(f"{v} {k}" for k, v in counts.items())
                + "\n"
            )
    combined = results_io.merge(parts)
    write_reports(combined, args.json, None, args.html)
    lines = []
    for c in combined.diverged:
        diffs = "; ".join(f"{k}: {ref!r} | {qemu!r}" for k, (ref, qemu) in c.differences.items())
        lines.append(f"DIVERGE {c.scenario} [{c.qemu_version}]: {diffs}")
    for e in combined.errors:
        label = "ENVIRONMENT ERROR" if e.kind == "environment" else "ERROR"
        lines.append(f"{label} {e.scenario} [{e.column}] {e.backend}: {e.error.splitlines()[-1]}")
    counts = combined.counts()
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    sys.stdout.write("\n".join(lines) + "\n")
    signum = procutil.interrupted()
    return 128 + signum if signum is not None else _exit_status(parts)
