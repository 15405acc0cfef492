"""``migconform fuzz``: the options, the workers (``--jobs N`` processes, seeds N, N+1, ...), every binary one
after the other within the budget, the printed summary and the results file with its ``meta.fuzz``.

Exit status: 0 when no divergence was found, 1 when one was (the found files say which), 2 for bad usage,
128 + the signal for an interrupted run (what finished is written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import re
import secrets
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.outcome import Outcome
from harness import procutil
from harness import results as results_io
from harness.commands.usage import positive_int
from harness.compare import Comparison
from harness.errors import UsageError
from harness.results import EXIT_FAILED, EXIT_PASSED, Results

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """``--budget``: seconds, or a number with s, m or h (``90``, ``60s``, ``10m``, ``1.5h``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 90, 60s, 10m or 1h, not {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=duration, default=600.0, metavar="TIME", help="wall time (default 10m)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the first worker (default: random, printed)")
    parser.add_argument("--qemu", action="append", default=[], metavar="BINARY", help="default: every binary found")
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="N", help="independent workers (processes)")
    parser.add_argument(
        "--results-dir", type=Path, default=Path("results/fuzz"), metavar="DIR", help="default: results/fuzz"
    )
    parser.add_argument("--found", type=Path, metavar="DIR", help="minimal scenarios found (default: DIR/found)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="bound of each wait (default 10)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def fuzz_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One worker on one binary (run in this process or in a pool's): its session's summary."""
    from harness.fuzz.lockstep import LockstepRunner
    from harness.fuzz.session import FuzzSession
    from harness.fuzz.vocabulary import FUZZ_VM, vocabulary_for
    from harness.targets import targets_for_binaries

    binary: QemuBinary = spec["binary"]
    (target,) = targets_for_binaries([binary])
    session = FuzzSession(
        LockstepRunner(target, FUZZ_VM, timeout=spec["timeout"]),
        vocabulary_for(binary),
        budget_s=spec["budget_s"],
        seed=spec["seed"],
        found_dir=spec["found_dir"],
        db_dir=spec["db_dir"],
        progress=None if spec["quiet"] else sys.stderr,
    )
    session.run()
    summary = session.summary()
    summary["findings"] = [
        {"id": d["id"], "check": f.check}
        for d, f in zip(summary["divergences"], session.findings.values(), strict=True)
    ]
    return summary


def run_workers(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(specs) == 1:
        return [fuzz_worker(specs[0])]
    # spawn: the parent may hold threads (probes) and signal handlers a fork would copy half-done.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(specs), mp_context=context) as pool:
        return list(pool.map(fuzz_worker, specs))


def results_of(summaries: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Results:
    """The results file: each finding as one item (its QEMU and model outcomes, its comparison), ``meta.fuzz``."""
    res = Results(meta=meta)
    for summary in summaries:
        for found in summary.pop("findings"):
            check = found["check"]
            for outcome in (check.qemu, check.model):
                if isinstance(outcome, Outcome):
                    outcome.scenario = found["id"]
                    res.outcomes.append(outcome)
            if isinstance(check.comparison, Comparison):
                check.comparison.scenario = found["id"]
                res.comparisons.append(check.comparison)
    return res


def _print_summary(fuzz: dict[str, Any]) -> None:
    lines = []
    for s in fuzz["workers"]:
        lines.append(
            f"fuzz {s['column']} seed {s['seed']}: {s['sequences']} sequences, {s['steps']} steps in "
            f"{s['seconds']} s ({s['steps_per_minute']} steps/min), {len(s['divergences'])} divergences, "
            f"{s['not_modelled']} not modelled, {s['known_bug']} known QEMU bug, {s['errors']} errors, "
            f"{s['unstable']} unstable"
        )
        for d in s["divergences"]:
            lines.append(f"DIVERGE {d['file']} ({d['steps']} steps)")
            lines.append(f"  QEMU:  {d['qemu']}")
            lines.append(f"  model: {d['model']}")
    total = fuzz["total"]
    lines.append(
        f"fuzz: seeds {', '.join(str(s) for s in fuzz['seeds'])}; {total['sequences']} sequences, {total['steps']} "
        f"steps, {total['steps_per_minute']} steps/min, {total['divergences']} divergences, "
        f"{total['not_modelled']} not modelled"
    )
    sys.stdout.write("\n".join(lines) + "\n")


def cmd_fuzz(args: argparse.Namespace) -> int:
    from harness.commands.run import qemu_binaries

    binaries = qemu_binaries(args.qemu)
    first_seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    found_dir = args.found or args.results_dir / "found"
    found_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    clock = time.monotonic()
    budget = args.budget / len(binaries)
    summaries: list[dict[str, Any]] = []
    for binary in binaries:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(binary.version))
        specs = [
            {
                "binary": binary,
                "seed": first_seed + j,
                "budget_s": budget,
                "timeout": args.timeout,
                "found_dir": found_dir,
                "db_dir": args.results_dir / "db" / safe,
                "quiet": args.quiet,
            }
            for j in range(args.jobs)
        ]
        summaries += run_workers(specs)
        if procutil.interrupted() is not None:
            break
    fuzz = fuzz_meta(summaries, first_seed, args.jobs, time.monotonic() - clock)
    meta: dict[str, Any] = {
        "argv": sys.argv[1:],
        "backend": "both",
        "binaries": [{"path": str(b.path), "version": str(b.version), "label": b.label} for b in binaries],
        "versions": [str(b.version) for b in binaries],
        "start": started,
        "end": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "fuzz": fuzz,
    }
    res = results_of(summaries, meta)
    results_io.save(res, args.results_dir / "fuzz.json")
    _print_summary(fuzz)
    signum = procutil.interrupted()
    if signum is not None:
        return 128 + signum
    return EXIT_FAILED if fuzz["total"]["divergences"] else EXIT_PASSED


def fuzz_meta(summaries: Sequence[dict[str, Any]], first_seed: int, jobs: int, seconds: float) -> dict[str, Any]:
    """``meta.fuzz``: the workers' summaries and their totals over ``seconds`` of wall time (what the console and
    the HTML report show)."""
    workers = [{k: v for k, v in s.items() if k != "findings"} for s in summaries]
    steps = sum(s["steps"] for s in workers)
    total = {
        "sequences": sum(s["sequences"] for s in workers),
        "steps": steps,
        "steps_per_minute": round(steps / (seconds / 60), 1) if seconds else 0.0,
        "divergences": sum(len(s["divergences"]) for s in workers),
        "not_modelled": sum(s["not_modelled"] for s in workers),
        "run_seconds": round(sum(s["run_seconds"] for s in workers), 1),
        "seconds": round(seconds, 1),
    }
    return {"seeds": sorted({first_seed + j for j in range(jobs)}), "jobs": jobs, "workers": workers, "total": total}
