"""``migconform run`` and ``migconform conformance``: scenarios on targets, with the outputs, logs, VFIO
devices and coverage floor the options ask for."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.scenario import Scenario
from contract.versions import profile_for
from harness import procutil, settings
from harness.commands.outputs import check_writable, check_writable_dir, write_reports
from harness.commands.usage import AUTO, shard_option
from harness.cross_targets import plan_items
from harness.errors import UsageError
from harness.loader import load_scenarios
from harness.report import console
from harness.run_pairs import Item, cross_suite, pair_plan, run_items
from harness.runner import RunOptions, run_sync
from harness.suite import SUITE_DIR
from harness.targets import Target, target_for_profile, targets_for_binaries

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

SUITE_ENV = settings.SUITE


def suite_path() -> Path:
    """The bundled scenario suite: ``$MIGCONFORM_SUITE``, else the one shipped in the package (harness.suite)."""
    override = settings.suite_override()
    if override is not None:
        return override
    if SUITE_DIR.is_dir():
        return SUITE_DIR
    raise UsageError(f"cannot find the bundled suite ({SUITE_DIR}); set {SUITE_ENV}")


def _floor(args: argparse.Namespace, items: Sequence[Item]) -> tuple[bool, int | None, dict[str, Any]]:
    """(require_all, min_compared, what to record in meta) from --require-all and --min-compared."""
    require_all = bool(getattr(args, "require_all", False))
    minimum = getattr(args, "min_compared", None)
    if minimum != AUTO:
        return require_all, minimum, {}
    if args.backend != "both":
        # One backend alone compares nothing: there is no floor to compute.
        return require_all, 0, {"floor_auto": {"capable": 0, "total": 0, "host_lacks": [], "backend": args.backend}}
    from harness.targets import host_capable_items

    capable, lacking = host_capable_items([], [], items)
    total = sum(1 for _, t in items if t.binary is not None or t.missing is not None)
    info = {"capable": capable, "total": total, "host_lacks": lacking}
    return require_all or capable == total, capable, {"floor_auto": info}


def qemu_binaries(paths: Sequence[str]) -> list[QemuBinary]:
    from harness.binaries import discover_binaries, is_version_request, load_binary, select_version
    from harness.errors import BinaryError

    try:
        if paths:
            # A version (--qemu 10.2) picks among the binaries discovery finds; anything else is a path.
            found = discover_binaries() if any(is_version_request(p) for p in paths) else []
            return [
                select_version(p, found) if is_version_request(p) else load_binary(p, origin="--qemu") for p in paths
            ]
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
    return targets_for_binaries(qemu_binaries(args.qemu))


def _logs_root(args: argparse.Namespace, json_path: Path | None) -> Path:
    if args.logs_dir is not None:
        return Path(args.logs_dir)
    if json_path is not None:
        return json_path.parent / "logs"
    return Path("results") / "logs"


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
    lab_kernel = getattr(args, "lab_kernel", None)
    if lab_kernel:
        # The lab's kernel (harness.vfio_lab.kernels): a shorthand for the mtty provider's series option.
        if args.vfio_provider not in (None, "mtty") or args.vfio_device:
            raise UsageError("--lab-kernel selects the mtty lab's kernel: it does not go with another VFIO source")
        return "mtty", {**options, "series": lab_kernel}
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


def _run(
    args: argparse.Namespace,
    scenarios: list[Scenario],
    outputs: tuple[Path | None, ...],
    cross_scenarios: Sequence[Scenario] = (),
) -> int:
    """``cross_scenarios``: scenarios run over every ordered pair of versions (conformance's cross set)."""
    json_path, junit_path, html_path = outputs
    for path, flag in ((json_path, "--json"), (junit_path, "--junit"), (html_path, "--html")):
        if path is not None:
            check_writable(path, flag)
    logs_dir: Path | None = None
    if args.backend != "reference" and args.keep_logs != "none":
        logs_dir = _logs_root(args, json_path)
        check_writable_dir(logs_dir, "--logs-dir")
    scenarios = shard_option(args.shard, scenarios, getattr(args, "balance", None))
    targets = _targets(args)
    items = run_items(args, scenarios, targets)
    if cross_scenarios and len({t.version for t in targets}) >= 2:
        cross = shard_option(args.shard, list(cross_scenarios))
        scenarios = scenarios + cross
        items += plan_items(cross, pair_plan(args, targets, cross=True))
    vfio_provider, vfio_options = _vfio_source(args)
    require_all, min_compared, floor_meta = _floor(args, items)
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
            **({"balance": args.balance} if getattr(args, "balance", None) else {}),
            **({"cell": args.cell} if getattr(args, "cell", None) else {}),
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
    plain = items == [(s, t) for s in scenarios for t in targets]
    # Every scenario on every target is the runner's default: such a run calls it exactly as before.
    res = run_sync(scenarios, targets, options) if plain else run_sync(scenarios, targets, options, items)
    write_reports(res, json_path, junit_path, html_path)
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
    suite = suite_path()
    scenarios = _load([suite], args.no_exec)
    cross = cross_suite(args, suite, scenarios)
    out: Path = args.results_dir
    outputs = (
        args.json or out / "results.json",
        args.junit or out / "junit.xml",
        args.html or out / "report.html",
    )
    status = _run(args, scenarios, outputs, cross)
    if not args.quiet:
        sys.stderr.write("results: " + ", ".join(str(p) for p in outputs if p is not None) + "\n")
    return status
