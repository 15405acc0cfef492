"""Avocado entry point: every scenario is one avocado test, run by the same runner as ``migconform run``.

Avocado (``pip install 'migconform[avocado]'``) finds tests by reading files, so a suite whose tests are
scenario files is handed to it as a *runnables recipe*: ``recipe`` prints one ``exec-test`` runnable per
scenario, and each runnable calls ``one`` on its scenario file, which runs it on every QEMU binary
through harness.runner (real QEMU against the model) and exits 0 when all agree, 77 (avocado's skip,
configured in the runnable) when nothing could be compared, 1 otherwise. Its console report is the
test's output in avocado's job log.

    .venv/bin/avocado run --resolver-run-executables tests/avocado/conformance
    .venv/bin/avocado run --resolver-run-executables tests/avocado/conformance \\
        --resolver-exec-arguments "--scenario basic-precopy-tcp --scenario postcopy-tcp"

``tests/avocado/hw`` does the same for the VFIO scenarios, with ``--vfio-provider mtty`` or the host's
devices (``MIGCONFORM_VFIO_DEVICES``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.loader import load_scenarios
from harness.suite import SUITE_DIR

REPO = Path(__file__).resolve().parent.parent
SUITE = SUITE_DIR
SKIP_STATUS = 77


def recipe(
    paths: Sequence[Path], *, only: Sequence[str] = (), run_args: Sequence[str] = (), python: str | None = None
) -> list[dict[str, object]]:
    """The runnables: one exec-test per scenario, named ``migconform:<scenario id>``."""
    scenarios = load_scenarios(list(paths))
    known = {s.id for s in scenarios}
    missing = [i for i in only if i not in known]
    if missing:
        raise ValueError(f"no scenario {', '.join(missing)} in {', '.join(map(str, paths))}")
    runnables: list[dict[str, object]] = []
    for scenario in scenarios:
        if only and scenario.id not in only:
            continue
        if scenario.path is None:
            continue
        runnables.append(
            {
                "kind": "exec-test",
                "uri": python or sys.executable,
                "identifier": f"migconform:{scenario.id}",
                "args": ["-m", "harness.avocado_tests", "one", scenario.path, *run_args],
                "config": {"runner.exectest.exitcodes.skip": [SKIP_STATUS]},
                "kwargs": {"PYTHONPATH": str(REPO)},
            }
        )
    return runnables


def run_one(path: Path, qemu: Sequence[str], vfio_provider: str | None, timeout: float) -> int:
    """One scenario file on every binary; the exit status avocado reads."""
    from harness.binaries import discover_binaries, load_binary
    from harness.report import console
    from harness.runner import RunOptions, VfioProvider, run_sync
    from harness.targets import targets_for_binaries

    scenarios = load_scenarios([path])
    binaries = [load_binary(p, origin="--qemu") for p in qemu] if qemu else discover_binaries()
    if not binaries:
        print("no QEMU binary found (QEMU_BINARY, scripts/setup.sh, PATH)")
        return SKIP_STATUS
    provider: VfioProvider | None = None
    if vfio_provider == "host":
        from harness.vfio.host import configured_devices
        from harness.vfio.host_provider import HostProvider

        names = configured_devices()
        if not names:
            print("no VFIO device configured: set MIGCONFORM_VFIO_DEVICES=0000:3b:00.1,0000:3b:00.2")
            return SKIP_STATUS
        provider = HostProvider(names)
    options = RunOptions(
        jobs=1,
        timeout=timeout,
        provider=provider,
        vfio_provider=vfio_provider,
        progress=sys.stdout,
    )
    results = run_sync(scenarios, targets_for_binaries(binaries), options)
    sys.stdout.write(console.render(results))
    if not results.passed:
        return 1
    return 0 if results.comparisons else SKIP_STATUS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.avocado_tests")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recipe", help="print the runnables recipe (JSON) for avocado")
    rec.add_argument("paths", nargs="*", type=Path, help="scenario files or folders (default: the suite)")
    rec.add_argument("--scenario", action="append", default=[], metavar="ID", help="only these (repeatable)")
    rec.add_argument("--vfio-only", action="store_true", help="only the suite's VFIO scenarios (vfio-*.toml)")
    one = sub.add_parser("one", help="run one scenario file (what each avocado test does)")
    one.add_argument("path", type=Path)
    for p in (rec, one):
        p.add_argument("--qemu", action="append", default=[], metavar="BINARY")
        p.add_argument("--vfio-provider", choices=("mtty", "host"), help="where VFIO devices come from")
        p.add_argument("--timeout", type=float, default=60.0, metavar="S")
    args = parser.parse_args(argv)
    if args.command == "one":
        return run_one(args.path, args.qemu, args.vfio_provider, args.timeout)
    paths: list[Path] = args.paths or (sorted(SUITE.glob("vfio-*.toml")) if args.vfio_only else [SUITE])
    run_args = [f"--qemu={q}" for q in args.qemu] + [f"--timeout={args.timeout}"]
    if args.vfio_provider:
        run_args.append(f"--vfio-provider={args.vfio_provider}")
    try:
        runnables = recipe(paths, only=args.scenario, run_args=run_args)
    except ValueError as exc:
        print(f"harness.avocado_tests: {exc}", file=sys.stderr)
        return 2
    json.dump(runnables, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
