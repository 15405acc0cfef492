"""``migconform``: the command line (also ``python -m harness``).

Exit status (contract): 0 when every compared scenario agrees (skips allowed and counted), 1 when any
diverges or errs (or an interrupted run left items unrun, or a coverage floor set with ``--require-all`` /
``--min-compared`` does not hold), 2 for bad usage, unusable binaries or unloadable scenarios, and output
files that cannot be written (checked before anything runs). Extension: 3 when nothing diverged and the
harness did not fail, but the host did (out of memory or disk, a results file that cannot be written during
the run): an environment error, nothing to report to QEMU. Results files are written while the run goes,
so Ctrl-C keeps what finished.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from harness import procutil, settings
from harness import results as results_io
from harness.errors import HostEnvironmentError
from harness.item_logs import missing_folders, remove_empty
from harness.loader import load_scenarios
from harness.report import console, html, junit
from harness.results import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, Results
from harness.runner import BACKENDS, KEEP_LOGS, ProviderUnavailable, RunOptions, run_sync
from harness.scenario_error import ScenarioError
from harness.shards import parse_shard, select_shard
from harness.targets import Target, target_for_profile, targets_for_binaries
from reference_impl.scenario import Scenario
from reference_impl.versions import profile_for

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE_ENV = settings.SUITE


class UsageError(Exception):
    """Bad usage the user can fix (exit status 2)."""


def suite_path() -> Path:
    """The bundled scenario suite: ``$MIGCONFORM_SUITE``, else the repository's, else the current folder's."""
    override = settings.suite_override()
    if override is not None:
        return override
    for base in (REPO_ROOT, Path.cwd()):
        candidate = base / "tests" / "conformance" / "scenarios"
        if candidate.is_dir():
            return candidate
    raise UsageError(f"cannot find the bundled suite (tests/conformance/scenarios); set {SUITE_ENV}")


def _whole_number(text: str, minimum: int, what: str = "a whole number") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError("must not be negative" if minimum == 0 else f"must be at least {minimum}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


AUTO = "auto"


def _min_compared(text: str) -> int | str:
    return AUTO if text == AUTO else _whole_number(text, 0, "a whole number or auto")


def _floor(args: argparse.Namespace, scenarios: Sequence[Scenario], targets: Sequence[Target]) -> tuple[
    bool, int | None, dict[str, Any]
]:
    """(require_all, min_compared, what to record in meta) from --require-all and --min-compared."""
    require_all = bool(getattr(args, "require_all", False))
    minimum = getattr(args, "min_compared", None)
    if minimum != AUTO:
        return require_all, minimum, {}
    if args.backend != "both":
        # One backend alone compares nothing: there is no floor to compute.
        return require_all, 0, {"floor_auto": {"capable": 0, "total": 0, "host_lacks": [], "backend": args.backend}}
    from harness.targets import host_capable_items

    capable, lacking = host_capable_items(scenarios, targets)
    total = len(scenarios) * sum(1 for t in targets if t.binary is not None)
    info = {"capable": capable, "total": total, "host_lacks": lacking}
    return require_all or capable == total, capable, {"floor_auto": info}


def _add_run_options(parser: argparse.ArgumentParser, *, outputs_default: bool = False) -> None:
    parser.add_argument(
        "--qemu",
        action="append",
        default=[],
        metavar="BINARY",
        help="QEMU binary to test (repeatable; default: $QEMU_BINARY, the set-up script's versions, PATH)",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="both", help="default: both (QEMU and the model)")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="VERSION",
        help="model profile for --backend reference (repeatable), e.g. 8.2",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="outcome records and comparisons")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="JUnit XML, one testcase per scenario x version")
    parser.add_argument("--html", type=Path, metavar="FILE", help="HTML report")
    parser.add_argument(
        "--jobs", type=_positive_int, default=os.cpu_count() or 1, metavar="N", help="scenarios run in parallel"
    )
    parser.add_argument("--shard", metavar="K/N", help="run only the K-th of N stable slices of the scenarios")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="bound of each wait (default 60)")
    parser.add_argument("--vfio-provider", metavar="NAME", help="where VFIO devices come from (e.g. mtty)")
    parser.add_argument(
        "--vfio-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the VFIO provider (repeatable), e.g. variant=iovabm for mtty",
    )
    parser.add_argument(
        "--vfio-device",
        action="append",
        default=[],
        metavar="BDF",
        help="a real host device for VFIO (repeatable; also $MIGCONFORM_VFIO_DEVICES): the host provider",
    )
    parser.add_argument(
        "--allow-rebind",
        action="store_true",
        help="with --vfio-device: bind devices to vfio-pci for the run and restore their drivers afterwards",
    )
    parser.add_argument(
        "--logs-dir",
        type=Path,
        metavar="DIR",
        help="where each item's QEMU logs go, one folder per item (default: logs/ beside --json, else results/logs)",
    )
    parser.add_argument(
        "--keep-logs",
        choices=KEEP_LOGS,
        default="failed",
        help="which items keep their logs folder (default failed: divergences, errors, known bugs)",
    )
    parser.add_argument(
        "--require-all",
        action="store_true",
        help="coverage floor: every item must be compared; any skip fails the run (exit 1) with its reason",
    )
    parser.add_argument(
        "--min-compared",
        type=_min_compared,
        metavar="N|auto",
        help="coverage floor: fewer than N compared items fail the run (exit 1); auto: every item whose "
        "declared host capabilities (requires kvm/uffd/uffd-wp, accel) this host has, and --require-all when "
        "that is all of them",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run each item's QEMU side N times (the model once) and report per-item stability; "
        "exit status 1 when an item's runs differ (default 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line, no table")
    parser.add_argument(
        "--no-exec",
        action="store_true",
        help="refuse (exit 2, before any QEMU starts) scenarios that would run a host command: transport exec, "
        "exec: URIs, tap/bridge netdevs, ... (docs/scenario-format.md#security)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migconform",
        description="Conformance harness for QEMU live migration: real QEMU against a reference model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run scenario files or folders")
    run.add_argument("paths", nargs="+", metavar="PATH", help="scenario files or folders of them")
    _add_run_options(run)

    conf = sub.add_parser("conformance", help="run the bundled suite; results/ gets JSON, JUnit and HTML")
    _add_run_options(conf)
    conf.add_argument("--results-dir", type=Path, default=Path("results"), metavar="DIR", help="default: results/")

    merge = sub.add_parser("merge", help="merge results files (e.g. shards)")
    merge.add_argument("inputs", nargs="+", type=Path, metavar="RESULTS.json")
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.json")
    merge.add_argument("--junit", type=Path, metavar="FILE")
    merge.add_argument("--html", type=Path, metavar="FILE")

    report = sub.add_parser("report", help="render a results file")
    report.add_argument("results", type=Path, metavar="RESULTS.json")
    report.add_argument("--html", type=Path, metavar="OUT.html")
    report.add_argument("--junit", type=Path, metavar="OUT.xml")

    sub.add_parser("qemus", help="the QEMU binaries found, their accelerators and host facts")

    sweep = sub.add_parser("sweep", help="every capability set of --size, model against QEMU")
    sweep.add_argument("--qemu", action="append", default=[], metavar="BINARY")
    sweep.add_argument("--backend", choices=BACKENDS, default="both", help="default: both (QEMU and the model)")
    sweep.add_argument("--size", type=_positive_int, default=2, metavar="K", help="capabilities per set (default 2)")
    sweep.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, metavar="N")
    sweep.add_argument("--transports", default="tcp,file", help="comma-separated (default tcp,file)")
    sweep.add_argument("--modes", default="precopy,postcopy,background-snapshot", help="comma-separated")
    sweep.add_argument("--shard", metavar="K/N", help="only the K-th of N slices of the generated scenarios")
    sweep.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N generated scenarios")
    sweep.add_argument(
        "--timeout", type=float, default=20.0, metavar="S", help="bound of each wait (default 20: the VMs are tiny)"
    )
    sweep.add_argument("--json", type=Path, metavar="FILE")
    sweep.add_argument("--html", type=Path, metavar="FILE")
    sweep.add_argument("--quiet", action="store_true")

    from harness import certify

    cert = sub.add_parser("certify", help="certify a VFIO device: JSON + HTML + JUnit bundle in -o DIR")
    certify.add_arguments(cert)

    from harness.mutants import run as mutants_run

    mutants = sub.add_parser(
        "mutants", help="mutation check: QEMU built from source with deliberate bugs must be caught (docs/mutants.md)"
    )
    mutants_run.add_arguments(mutants)
    return parser


def _binaries(paths: Sequence[str]) -> list[QemuBinary]:
    from harness.binaries import discover_binaries, load_binary
    from harness.errors import BinaryError

    try:
        if paths:
            return [load_binary(p, origin="--qemu") for p in paths]
        found = discover_binaries()
    except BinaryError as exc:
        raise UsageError(f"unusable QEMU binary: {exc}") from None
    if not found:
        raise UsageError("no QEMU binary found: pass --qemu BINARY, set QEMU_BINARY, or run scripts/setup.sh")
    return found


def _targets(args: argparse.Namespace) -> list[Target]:
    if args.profile:
        if args.backend != "reference":
            raise UsageError("--profile applies to --backend reference only (with QEMU the binary sets the version)")
        if args.qemu:
            raise UsageError("--profile and --qemu exclude each other (the model runs at the profile's version)")
        targets = []
        for text in args.profile:
            try:
                profile_for(text)
                targets.append(target_for_profile(text))
            except ValueError as exc:
                raise UsageError(f"--profile {text}: {exc}") from None
        return targets
    return targets_for_binaries(_binaries(args.qemu))


def _write_reports(res: Results, json_path: Path | None, junit_path: Path | None, html_path: Path | None) -> None:
    """Every report asked for; a host that cannot take one (full disk) is an environment error."""
    for path, kind in ((json_path, "json"), (junit_path, "junit"), (html_path, "html")):
        if path is None:
            continue
        try:
            if kind == "json":
                results_io.save(res, path)
            elif kind == "junit":
                results_io.write_atomic(path, junit.render(res))
            else:
                results_io.write_atomic(path, html.render(res, base=path.parent))
        except OSError as exc:
            raise HostEnvironmentError(f"cannot write {path}", exc.strerror or str(exc)) from exc


def check_writable(path: Path, what: str) -> None:
    """Before anything runs: ``path``'s folder exists (created) and takes a file, and ``path`` is not a
    folder; else a usage error (exit 2), so that an hour-long run does not end in a traceback."""
    if path.is_dir():
        raise UsageError(f"{what} {path}: is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        try:
            os.write(fd, b"{}\n")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there: {exc.strerror or exc}") from None


def check_writable_dir(path: Path, what: str) -> None:
    """Like :func:`check_writable`, for a folder migconform writes into (the logs root); a folder this check
    created is removed again (the run creates it when an item needs it)."""
    created = missing_folders(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".probe-", dir=path)
        os.rmdir(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there: {exc.strerror or exc}") from None
    finally:
        remove_empty(created)


def _logs_root(args: argparse.Namespace, json_path: Path | None) -> Path:
    if args.logs_dir is not None:
        return Path(args.logs_dir)
    if json_path is not None:
        return json_path.parent / "logs"
    return Path("results") / "logs"


def _exit_status(results: Sequence[Results]) -> int:
    """1 beats 3 beats 0: a divergence or harness failure is never hidden behind a host failure."""
    statuses = {r.exit_status for r in results}
    for status in (EXIT_FAILED, EXIT_ENVIRONMENT):
        if status in statuses:
            return status
    return EXIT_PASSED


def _vfio_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--vfio-option expects KEY=VALUE, not {item!r}")
        options[key] = value
    return options


def _vfio_source(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """The VFIO provider and its options: --vfio-provider, or real host devices from --vfio-device (and
    $MIGCONFORM_VFIO_DEVICES), which the ``host`` provider inspects before any QEMU runs."""
    from harness.vfio.host import configured_devices

    options = _vfio_options(args.vfio_option)
    names = configured_devices(args.vfio_device)
    if not names:
        return args.vfio_provider, options
    if args.vfio_provider and args.vfio_provider != "host":
        if args.vfio_device:
            raise UsageError("--vfio-device and --vfio-provider exclude each other (one source of VFIO devices)")
        return args.vfio_provider, options  # an explicit provider wins over $MIGCONFORM_VFIO_DEVICES
    options["device"] = ",".join(names)
    if args.allow_rebind:
        options["allow-rebind"] = "true"
    return "host", options


def _run(args: argparse.Namespace, scenarios: list[Scenario], outputs: tuple[Path | None, ...]) -> int:
    json_path, junit_path, html_path = outputs
    for path, flag in ((json_path, "--json"), (junit_path, "--junit"), (html_path, "--html")):
        if path is not None:
            check_writable(path, flag)
    logs_dir: Path | None = None
    if args.backend != "reference" and args.keep_logs != "none":
        logs_dir = _logs_root(args, json_path)
        check_writable_dir(logs_dir, "--logs-dir")
    if args.shard:
        try:
            k, n = parse_shard(args.shard)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        scenarios = select_shard(scenarios, k, n)
    targets = _targets(args)
    vfio_provider, vfio_options = _vfio_source(args)
    require_all, min_compared, floor_meta = _floor(args, scenarios, targets)
    options = RunOptions(
        backend=args.backend,
        jobs=args.jobs,
        json_path=json_path,
        timeout=args.timeout,
        vfio_provider=vfio_provider if args.backend != "reference" else None,
        vfio_options=vfio_options,
        progress=None if args.quiet else sys.stderr,
        meta={
            "argv": sys.argv[1:],
            "shard": args.shard,
            **floor_meta,
            **({"repeat": args.repeat} if args.repeat > 1 else {}),
        },
        logs_dir=logs_dir,
        keep_logs=args.keep_logs,
        no_exec=args.no_exec,
        require_all=require_all,
        min_compared=min_compared,
        repeat=args.repeat,
    )
    res = run_sync(scenarios, targets, options)
    _write_reports(res, json_path, junit_path, html_path)
    if not args.quiet:
        sys.stdout.write(console.render(res))
    signum = procutil.interrupted()
    if signum is not None:
        # One policy for SIGINT and SIGTERM: the run stopped, its results say so, and the status is the
        # shell's convention for "ended by this signal" (130, 143).
        name = res.meta.get("signal", str(signum))
        sys.stderr.write(f"migconform: interrupted by {name}; results written so far are kept\n")
        return 128 + signum
    problems = res.floor_problems
    if problems:
        # Also with --quiet: a run that fails only because it compared too little must say so.
        sys.stderr.write(f"migconform: coverage floor not met ({len(problems)} problems):\n")
        sys.stderr.write("".join(f"  {p}\n" for p in problems[:50]))
        if len(problems) > 50:
            sys.stderr.write(f"  ... and {len(problems) - 50} more (meta.floor.problems in the JSON)\n")
    return res.exit_status


def _load(paths: Sequence[str | Path], no_exec: bool) -> list[Scenario]:
    """The scenarios to run; none at all is a usage error, not a run that agrees having tested nothing."""
    scenarios = load_scenarios(paths, no_exec=no_exec)
    if not scenarios:
        named = ", ".join(str(p) for p in paths)
        raise UsageError(f"no scenario found in {named} (a folder is searched for *.toml, not its subfolders)")
    return scenarios


def cmd_run(args: argparse.Namespace) -> int:
    scenarios = _load(args.paths, args.no_exec)
    return _run(args, scenarios, (args.json, args.junit, args.html))


def cmd_conformance(args: argparse.Namespace) -> int:
    scenarios = _load([suite_path()], args.no_exec)
    out: Path = args.results_dir
    outputs = (
        args.json or out / "results.json",
        args.junit or out / "junit.xml",
        args.html or out / "report.html",
    )
    status = _run(args, scenarios, outputs)
    if not args.quiet:
        sys.stderr.write("results: " + ", ".join(str(p) for p in outputs if p is not None) + "\n")
    return status


def _load_results(path: Path) -> Results:
    try:
        return results_io.load(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_merge(args: argparse.Namespace) -> int:
    merged = results_io.merge(_load_results(p) for p in args.inputs)
    _write_reports(merged, args.output, args.junit, args.html)
    sys.stdout.write(console.render(merged))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    res = _load_results(args.results)
    _write_reports(res, None, args.junit, args.html)
    sys.stdout.write(console.render(res))
    return 0


def cmd_qemus(args: argparse.Namespace) -> int:
    from harness.binaries import discover_binaries
    from harness.probe import format_qemus

    sys.stdout.write(format_qemus(discover_binaries()).rstrip("\n") + "\n")
    return 0


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
    for target in targets_for_binaries(_binaries(args.qemu)):
        assert target.binary is not None
        try:
            caps = binary_capabilities(target.binary)
        except SweepError as exc:
            raise UsageError(str(exc)) from None
        scenarios = sweep_scenarios(caps, size=args.size, transports=transports, modes=modes)
        if args.shard:
            try:
                k, n = parse_shard(args.shard)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            scenarios = select_shard(scenarios, k, n)
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
    _write_reports(combined, args.json, None, args.html)
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


def cmd_certify(args: argparse.Namespace) -> int:
    from harness import certify

    return certify.main(args)


def cmd_mutants(args: argparse.Namespace) -> int:
    from harness.mutants import run as mutants_run

    return mutants_run.cmd_mutants(args)


COMMANDS = {
    "run": cmd_run,
    "conformance": cmd_conformance,
    "merge": cmd_merge,
    "report": cmd_report,
    "qemus": cmd_qemus,
    "sweep": cmd_sweep,
    "certify": cmd_certify,
    "mutants": cmd_mutants,
}


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"migconform: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ScenarioError as exc:
        _fail(str(exc))
    except (UsageError, ProviderUnavailable) as exc:
        _fail(str(exc))
    except HostEnvironmentError as exc:
        sys.stderr.write(f"migconform: environment error: {exc}\n")
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        sys.stderr.write("migconform: interrupted; results written so far are kept\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
