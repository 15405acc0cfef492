"""``migconform certify``: a device vendor's certification of one VFIO device type against QEMU.

A vendor asks one question: does QEMU gate *my* device correctly, and does it migrate? The suite's VFIO
scenarios are written for the lab's personalities; certification re-targets the ones written for a
migratable device (every VFIO device of the scenario asks for ``migratable``) to the personality the
device really has, read from its kernel driver before any QEMU starts (harness.vfio.host). Scenarios that
mix in other personalities (an mdpy blocker next to a migratable device, a no-P2P second device) test
QEMU's handling of *those* devices, not the vendor's, and are left out. The model predicts every
re-targeted scenario at the binary's version with the device's real flags, so a device without P2P or
pre-copy is certified against what QEMU should do with exactly that device.

The bundle in ``-o DIR``: ``certify.json`` (identity, driver, kernel, QEMU versions, flags, host facts,
every scenario's result against the model, the verdict and its reasons), ``certify.html``,
``certify.junit.xml``, ``results.json`` (the runner's results) and ``sysinfo/`` (``uname -a``,
``lspci -vvnn -s`` for PCI devices, dmesg lines about VFIO and the devices, the kernel command line).
The verdict is ``pass`` only if every scenario ran and agrees with the model and the device completed at
least one migration.

``--vfio-provider mtty`` certifies a device of the hardware-free lab instead: the lab's L1 guest creates
mdev instances of ``--personality`` and runs this same certification on them as host devices
(harness.vfio_lab.certify_inside, booted by harness.vfio_lab.certify_lab); the bundle is copied back to
``-o DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.scenario import PERSONALITIES, Scenario, VmSpec
from harness.errors import BinaryError, BuildError, LabError
from harness.results import Results, write_atomic
from harness.suite import SUITE_DIR
from harness.vfio_lab.certify_lab import certify_in_lab

if TYPE_CHECKING:
    from harness.binaries import QemuBinary
    from harness.vfio.host import HostVfioDevice
    from harness.vfio.host_provider import HostProvider

SUITE = SUITE_DIR
VFIO_GLOB = "vfio-*.toml"
BUNDLE_JSON = "certify.json"
BUNDLE_HTML = "certify.html"
BUNDLE_JUNIT = "certify.junit.xml"
RESULTS_JSON = "results.json"
SYSINFO = "sysinfo"
CERTIFIED_FROM = "migratable"


# --- the scenario set ------------------------------------------------------------------------------------


def _retarget_vm(spec: VmSpec, personality: str) -> VmSpec:
    devices = tuple(replace(d, personality=personality) if d.driver == "vfio-pci" else d for d in spec.devices)
    return replace(spec, devices=devices)


def is_certifiable(scenario: Scenario) -> bool:
    """A VFIO scenario whose every VFIO device is the stand-in for the vendor's device."""
    devices = [*scenario.source.vfio_devices, *scenario.destination.vfio_devices]
    return bool(devices) and all((d.personality or CERTIFIED_FROM) == CERTIFIED_FROM for d in devices)


def retarget(scenario: Scenario, personality: str) -> Scenario:
    """The scenario with every VFIO device asking for ``personality``; the id stays (reports name the file)."""
    if personality == CERTIFIED_FROM:
        return scenario
    note = f"[certify: re-targeted from {CERTIFIED_FROM} to {personality}] "
    return replace(
        scenario,
        description=note + scenario.description,
        source=_retarget_vm(scenario.source, personality),
        destination=_retarget_vm(scenario.destination, personality),
        tags=(*scenario.tags, f"certify:{personality}"),
    )


def certification_set(
    personality: str, *, suite: Path = SUITE, only: Sequence[str] = ()
) -> tuple[list[Scenario], list[str]]:
    """(re-targeted scenarios, ids left out and why) from the suite's VFIO scenarios."""
    from harness.loader import load_scenarios

    if personality not in PERSONALITIES:
        raise ValueError(f"unknown personality {personality!r} (known: {', '.join(PERSONALITIES)})")
    scenarios = load_scenarios(sorted(suite.glob(VFIO_GLOB)))
    known = {s.id for s in scenarios}
    unknown = [i for i in only if i not in known]
    if unknown:
        raise ValueError(f"no VFIO scenario {', '.join(unknown)} in {suite}")
    chosen: list[Scenario] = []
    left_out: list[str] = []
    for scenario in scenarios:
        if only and scenario.id not in only:
            continue
        if is_certifiable(scenario):
            chosen.append(retarget(scenario, personality))
        else:
            left_out.append(f"{scenario.id}: mixes in devices of other personalities (a lab gating scenario)")
    return chosen, left_out


# --- host facts, as avocado's sysinfo collects them ----------------------------------------------------


def _command(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} is not installed)"
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({' '.join(argv)} failed: {exc})"
    text = proc.stdout
    if proc.returncode != 0:
        text += f"\n(exit status {proc.returncode}) {proc.stderr.strip()}"
    return text


def collect_sysinfo(devices: Sequence[HostVfioDevice], directory: Path) -> dict[str, str]:
    """Writes the host's facts to ``directory``; returns {file name: first line or summary}."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {"uname.txt": _command(["uname", "-a"])}
    try:
        files["cmdline.txt"] = Path("/proc/cmdline").read_text()
    except OSError as exc:
        files["cmdline.txt"] = f"(unreadable: {exc})"
    for dev in devices:
        if dev.kind == "pci":
            files[f"lspci-{dev.vbasedev_name}.txt"] = _command(["lspci", "-vvnn", "-s", dev.vbasedev_name])
    dmesg = _command(["dmesg"])
    names = [re.escape(d.vbasedev_name) for d in devices]
    pattern = re.compile("|".join(["vfio", "iommu", "mdev", *names]), re.I)
    # The kernel command line mentions the lab's paths (harness.vfio_lab); it is in cmdline.txt anyway.
    wanted = [line for line in dmesg.splitlines() if pattern.search(line) and "command line" not in line]
    files["dmesg-vfio.txt"] = "\n".join(wanted) + "\n"
    summary = {}
    for name, text in files.items():
        (directory / name).write_text(text)
        first = text.strip().splitlines()[0] if text.strip() else ""
        summary[name] = first
    return summary


# --- the verdict ---------------------------------------------------------------------------------------


def scenario_rows(results: Results) -> list[dict[str, Any]]:
    """One row per scenario and column: the real outcome, the model's, and whether they agree."""
    from harness.report import build_matrix, verdict_text

    matrix = build_matrix(results)
    rows = []
    for scenario in matrix.scenarios:
        for column in matrix.columns:
            cell = matrix.cell(scenario, column)
            if cell is None:
                continue
            rows.append(
                {
                    "scenario": scenario,
                    "column": column,
                    "result": cell.kind,
                    "detail": cell.detail,
                    "qemu": verdict_text(cell.qemu) if cell.qemu is not None else None,
                    "model": verdict_text(cell.reference) if cell.reference is not None else None,
                    "differences": list(cell.comparison.differences) if cell.comparison else [],
                }
            )
    return rows


def decide(results: Results, devices: Sequence[HostVfioDevice]) -> tuple[bool, list[str]]:
    """(pass, reasons): pass only if every scenario ran and agrees and the device migrated."""
    reasons: list[str] = []
    for comparison in results.diverged:
        fields = ", ".join(f"{k} (model {v[0]!r}, QEMU {v[1]!r})" for k, v in comparison.differences.items())
        reasons.append(f"{comparison.scenario}: QEMU and the model disagree on {fields}")
    for error in results.errors:
        reasons.append(f"{error.scenario} [{error.column}]: harness error ({error.backend}): {error.error}")
    for item in results.not_run:
        reasons.append(f"{item.scenario} [{item.column}]: not run")
    for skip in results.skips:
        reasons.append(f"{skip.scenario} [{skip.column}]: not certified, skipped: {skip.reason}")
    unmigratable = [d for d in devices if d.features.flags is None or d.features.personality == "no-migration"]
    if unmigratable:
        names = ", ".join(d.vbasedev_name for d in unmigratable)
        reasons.append(
            f"the driver offers no VFIO migration (VFIO_DEVICE_FEATURE_MIGRATION GET: not supported, or no "
            f"STOP_COPY) on {names}, so QEMU blocks the migration of any VM using the device"
        )
    migrated = [
        o.scenario
        for o in results.outcomes
        if o.backend == "qemu" and o.verdict == "completed" and o.extra.get("vfio_names")
    ]
    if not migrated:
        reasons.append("the device completed no migration in any scenario")
    return not reasons, reasons


# --- the bundle ----------------------------------------------------------------------------------------


def _certify_html(bundle: dict[str, Any]) -> str:
    verdict = str(bundle["verdict"])
    colour = "#1a7f37" if verdict == "pass" else "#cf222e"
    devices = "".join(
        f"<tr><td><code>{escape(str(d.get('vbasedev_name')))}</code></td><td>{escape(str(d.get('kind')))}</td>"
        f"<td>{escape(str(d.get('driver')))}</td><td>{escape(str(d.get('vendor')))}:{escape(str(d.get('device')))}"
        f"</td><td>{escape(', '.join(d['features'].get('flag_names') or []) or 'none')}</td>"
        f"<td>{escape(str(d['features'].get('dma_logging')))}</td><td>{escape(str(d.get('personality')))}</td></tr>"
        for d in bundle["devices"]
    )
    reasons = "".join(f"<li>{escape(r)}</li>" for r in bundle["reasons"]) or "<li>none</li>"
    qemus = ", ".join(f"{escape(str(b['path']))} ({escape(str(b['version']))})" for b in bundle["qemu"])
    left = "".join(f"<li>{escape(x)}</li>" for x in bundle["left_out"])
    return (
        '<section class="certify">'
        f'<h2>Certification verdict: <span style="color:{colour}">{escape(verdict.upper())}</span></h2>'
        f"<p>personality: <b>{escape(str(bundle['personality']))}</b> · kernel {escape(str(bundle['kernel']))}"
        f" · QEMU: {qemus} · provider {escape(str(bundle['provider']))}</p>"
        "<table class='matrix'><thead><tr><th>device</th><th>kind</th><th>driver</th><th>IDs / type</th>"
        f"<th>migration flags</th><th>DMA logging</th><th>personality</th></tr></thead><tbody>{devices}</tbody>"
        f"</table><h3>Reasons</h3><ul>{reasons}</ul>"
        f"<details><summary>suite scenarios not part of this certification</summary><ul>{left}</ul></details>"
        "</section>"
    )


def write_bundle(directory: Path, bundle: dict[str, Any], results: Results) -> None:
    from harness.report import html, junit

    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / RESULTS_JSON, json.dumps(results.to_json(), indent=1) + "\n")
    write_atomic(directory / BUNDLE_JSON, json.dumps(bundle, indent=1, default=str) + "\n")
    page = html.render(results, title=f"migconform certify: {bundle['personality']} device")
    page = page.replace("</h1>", "</h1>" + _certify_html(bundle), 1)
    write_atomic(directory / BUNDLE_HTML, page)
    write_atomic(directory / BUNDLE_JUNIT, junit.render(results, suite_name="migconform-certify"))


def certify(
    provider: HostProvider,
    binaries: Sequence[QemuBinary],
    output: Path,
    *,
    only: Sequence[str] = (),
    provider_label: str = "host",
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Inspects the devices, runs the re-targeted set through the runner and writes the bundle."""
    from harness.runner import RunOptions, run_sync
    from harness.targets import targets_for_binaries

    devices = provider.prepare()  # HostDeviceRefused before any QEMU
    personalities = sorted({str(d.features.personality) for d in devices})
    if len(personalities) != 1:
        raise ValueError(
            "certify one device type at a time: the configured devices have personalities "
            + ", ".join(f"{d.vbasedev_name}={d.features.personality}" for d in devices)
        )
    personality = personalities[0]
    scenarios, left_out = certification_set(personality, only=only)
    sysinfo = collect_sysinfo(devices, output / SYSINFO)
    facts = provider.host_facts()
    options = RunOptions(
        backend="both",
        jobs=1,
        json_path=output / RESULTS_JSON,
        timeout=provider.timeout,
        provider=provider,
        vfio_provider=provider_label,
        progress=sys.stderr if progress else None,
        meta={"certify": True, "personality": personality},
    )
    output.mkdir(parents=True, exist_ok=True)
    try:
        results = run_sync(scenarios, targets_for_binaries(binaries), options)
    finally:
        provider.close()
    passed, reasons = decide(results, devices)
    bundle: dict[str, Any] = {
        "verdict": "pass" if passed else "fail",
        "reasons": reasons,
        "personality": personality,
        "provider": provider_label,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": provider.kernel,
        "qemu": [{"path": str(b.path), "version": str(b.version), "label": b.label} for b in binaries],
        "devices": [d.to_json() for d in devices],
        "rebound": provider.rebinder.rebound,
        "host_facts": {k: getattr(facts, k) for k in facts.__dataclass_fields__},
        "sysinfo": sysinfo,
        "scenarios": scenario_rows(results),
        "left_out": left_out,
        "counts": results.counts(),
    }
    bundle.update(extra or {})
    write_bundle(output, bundle, results)
    return bundle


# --- the command ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vfio-device",
        action="append",
        default=[],
        metavar="DEV",
        help="device to certify: PCI address, mdev UUID or sysfs path (repeatable; also $MIGCONFORM_VFIO_DEVICES). "
        "Local migration holds a device on each side: give two of the same type (four for two-device scenarios)",
    )
    parser.add_argument("--qemu", action="append", default=[], metavar="BINARY", help="QEMU to certify against")
    parser.add_argument(
        "--allow-rebind", action="store_true", help="bind devices (and their group) to vfio-pci; restored afterwards"
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("certify"), metavar="DIR", help="bundle folder")
    parser.add_argument(
        "--scenario", action="append", default=[], metavar="ID", help="only these suite scenarios (repeatable)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="bound of each wait (default 60)")
    parser.add_argument(
        "--dirty-report",
        choices=("auto", "works", "fails"),
        default="auto",
        help="whether the kernel's VFIO dirty-page report works (auto: CONFIG_IOMMUFD_DRIVER in its config)",
    )
    parser.add_argument(
        "--vfio-provider",
        choices=("host", "mtty"),
        default="host",
        help="host: this machine's devices (default); mtty: mdev devices created inside the VFIO lab",
    )
    parser.add_argument(
        "--personality", choices=PERSONALITIES, default="migratable", help="mtty: the mdev personality to certify"
    )
    parser.add_argument(
        "--lab-variant",
        choices=("iovabm", "stock"),
        default="iovabm",
        help="mtty: the lab kernel's vfio.ko; iovabm (default) reports dirty pages like a certification host's "
        "kernel should, stock is Debian's, whose reports fail (every default-property migration fails)",
    )
    parser.add_argument("--quiet", action="store_true")


def _binaries(paths: Sequence[str], default: str | None = None) -> list[QemuBinary]:
    from harness.binaries import discover_binaries, load_binary

    if paths:
        return [load_binary(p, origin="--qemu") for p in paths]
    if default is not None:
        return [load_binary(default, origin="default")]
    return discover_binaries()


def _print_summary(bundle: dict[str, Any], output: Path) -> None:
    print(f"certification of a {bundle['personality']} device: {str(bundle['verdict']).upper()}")
    for reason in bundle["reasons"]:
        print(f"  - {reason}")
    print(f"bundle: {output / BUNDLE_JSON}, {output / BUNDLE_HTML}, {output / BUNDLE_JUNIT}")


def main(args: argparse.Namespace) -> int:
    """0: pass, 1: fail (the bundle says why), 2: nothing could be certified (the message says why)."""
    from harness.vfio.host import configured_devices
    from harness.vfio.host_provider import HostDeviceRefused, HostProvider

    output: Path = args.output
    try:
        if args.vfio_provider == "mtty":
            bundle = asyncio.run(
                certify_in_lab(
                    args.personality,
                    _binaries(args.qemu, "/usr/bin/qemu-system-x86_64"),
                    output,
                    only=args.scenario,
                    variant=args.lab_variant,
                    timeout=args.timeout,
                )
            )
        else:
            names = configured_devices(args.vfio_device)
            dirty = None if args.dirty_report == "auto" else args.dirty_report == "works"
            provider = HostProvider(
                names, allow_rebind=args.allow_rebind, dirty_report_works=dirty, timeout=args.timeout
            )
            bundle = certify(provider, _binaries(args.qemu), output, only=args.scenario, progress=not args.quiet)
    except (HostDeviceRefused, ValueError, BinaryError, BuildError, LabError) as exc:
        print(f"migconform certify: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        _print_summary(bundle, output)
    return 0 if bundle["verdict"] == "pass" else 1


def run_cli(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.certify``: the command without harness.cli (also what the lab guest runs)."""
    parser = argparse.ArgumentParser(prog="migconform certify", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_cli())
