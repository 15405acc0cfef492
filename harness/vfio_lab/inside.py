"""The lab's runner: runs inside the L1 guest (chrooted into the host's root) and executes scenarios.

/init starts ``python -m harness.vfio_lab.inside --share DIR``. DIR is the writable 9p share; the host
put ``request.pickle`` there (scenarios and QEMU binaries as the harness's own objects: the guest runs
the same code from the same paths, so pickling round-trips exactly). Each scenario goes through
harness.executor.execute with an MdevAllocator, and its Outcome is appended to ``outcomes.jsonl`` at
once, so a guest that runs out of time still returns what it finished. An executor that raises (a
harness bug, not a QEMU result) leaves a ``lab_error`` line instead. ``runner.json`` records the
guest's kernel and uptime; ``dmesg.txt`` keeps mtty's migration-state log for diagnosis.

``--smoke`` instead runs one fixed check with its own QMP client (no executor): the postcopy refusal of
a migratable mtty device. It proves the lab itself works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.outcome import Outcome
from contract.scenario import DeviceSpec, Scenario
from harness.results import item_log_name
from harness.vfio_lab.mdev import MdevAllocator

REQUEST = "request.pickle"
OUTCOMES = "outcomes.jsonl"
RUNNER = "runner.json"
PROVIDER_NAME = "mtty"
LAB_ERROR = "lab_error"  # key of an outcomes.jsonl line that records an error instead of an outcome
LOGS = "logs"  # share subfolder with each item's QEMU logs (outcome.extra["lab_logs"]: the host keeps them)
# With LAB_ERROR, for an error that is the host's (harness.errors.HostEnvironmentError and subclasses): its
# class name, ``what`` and ``detail``, so that the host side raises the same error (not a skip, not a bug).
LAB_ERROR_TYPE = "lab_error_type"
# The first launch of each binary in L1 (harness.probe's wait for QMP) is bounded by this multiple of the boot's
# own time to the runner (probe_bound); never below harness.probe's own bound.
PROBE_BOOT_FACTOR = 4.0


@dataclass
class Request:
    """What the host asks the guest to run (written by harness.vfio.provider)."""

    scenarios: list[Scenario]
    binaries: list[Any]  # harness.binaries.QemuBinary
    variant: str
    scenario_timeout_s: float = 120.0  # one scenario, all steps
    wait_timeout_s: float = 30.0  # the executor's bound on each wait and QMP command
    personalities: list[str] | None = None  # what the lab image offers (None: all)
    unavailable_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Cross-version items: (scenario, source binary, destination binary), each side on its own binary.
    pairs: list[tuple[Scenario, Any, Any]] = field(default_factory=list)


def pair_key(source: Any, destination: Any) -> str:
    """How a cross-version item's binaries are named in a ``lab_error`` line (the host's item_errors key)."""
    return f"{source.path}->{destination.path}"


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _append(share: Path, record: dict[str, Any]) -> None:
    with (share / OUTCOMES).open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# VFIO_DEVICE_STATE_* (include/uapi/linux/vfio.h), as mtty's dev_dbg prints them (numbers).
DEVICE_STATES = {
    "0": "ERROR",
    "1": "STOP",
    "2": "RUNNING",
    "3": "STOP_COPY",
    "4": "RESUMING",
    "5": "RUNNING_P2P",
    "6": "PRE_COPY",
    "7": "PRE_COPY_P2P",
}
_STEP = re.compile(r"([0-9a-f-]{36}): mtty_step_state: (\d+) -> (\d+)")


class KernelLog:
    """New /dev/kmsg records since the last read: mtty's own view of each device's state machine.

    mtty is loaded with dyndbg=+p, so every arc of the kernel's migration FSM is logged with the mdev
    UUID; this is the kernel-side evidence next to QEMU's VFIO_MIGRATION events.
    """

    def __init__(self, path: str = "/dev/kmsg") -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = None

    def drain(self) -> list[str]:
        lines: list[str] = []
        while self._fd is not None:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: records were overwritten before we read them; go on with the rest
                continue
            if not record:
                break
            lines.append(record.decode(errors="replace").split(";", 1)[-1].rstrip("\n"))
        return lines

    def transitions(self, names: dict[str, str]) -> dict[str, list[str]]:
        """``{label: ["RUNNING->PRE_COPY", ...]}`` for the devices in ``names`` (label -> UUID)."""
        by_uuid = {uuid: label for label, uuid in names.items()}
        found: dict[str, list[str]] = {}
        for line in self.drain():
            match = _STEP.search(line)
            if match and match.group(1) in by_uuid:
                arc = "->".join(DEVICE_STATES.get(n, n) for n in match.group(2, 3))
                found.setdefault(by_uuid[match.group(1)], []).append(arc)
        return found


def _device_labels(outcome: Outcome) -> dict[str, str]:
    labels: dict[str, str] = {}
    for side, key in (("source", "vfio_names"), ("destination", "vfio_names_destination")):
        for device_id, uuid in dict(outcome.extra.get(key) or {}).items():
            labels[f"{side}:{device_id}"] = str(uuid)
    return labels


def _error_record(scenario: Scenario, binary: Any, reason: str, exc: BaseException | None = None) -> dict[str, Any]:
    """The executor raised (a harness bug, or a resource the lab could not give): the host reports it as an
    error of the item, never as a skip."""
    from harness.errors import HostEnvironmentError

    binary_path = str(getattr(binary, "path", binary))
    record: dict[str, Any] = {LAB_ERROR: reason, "scenario": scenario.id, "binary": binary_path}
    if isinstance(exc, HostEnvironmentError):
        record[LAB_ERROR_TYPE] = {"class": type(exc).__name__, "what": exc.what, "detail": exc.detail}
    return record


def probe_bound(boot_s: float | None) -> float:
    """The bound on the first QEMU launch of a binary in this L1 guest, derived from this boot's measured time.

    Why not harness.probe's fixed PROBE_LAUNCH_TIMEOUT_S (20 s; the executor passes at most that): a binary's probe
    is the first launch of its QEMU in L1, which reads the binary and its libraries over 9p under TCG, the work that
    also dominates the boot to the runner (the runner's Python imports over the same 9p share), and both scale with
    the host's load. Under load ~20 the 20 s bound ran out once for QEMU 7.2.22, and since a failed probe is cached
    per binary, all 34 items of its column became errors. So the bound is PROBE_BOOT_FACTOR times ``boot_s``, the
    guest's uptime when the runner started (runner.json's ``uptime_at_start``), measured in the same boot under the
    same load; never less than the fixed bound. Measured in the lab on 2026-12-03 (docs/vfio-lab.md, "Measured
    timings"), a whole first probe (launch, QMP queries, the feature probe: more than the launch the bound covers)
    took 0.25-0.73 of ``boot_s`` for 10.0.2 and 10.2.2 and 0.88-1.00 for 7.2.22 (its libraries come from the cache
    over 9p too): 27.8 s after a 31.6 s boot at load 11-13. The factor 4 leaves four times the largest ratio
    measured."""
    from harness.probe import PROBE_LAUNCH_TIMEOUT_S

    if boot_s is None or boot_s <= 0:
        return PROBE_LAUNCH_TIMEOUT_S
    return max(PROBE_LAUNCH_TIMEOUT_S, PROBE_BOOT_FACTOR * boot_s)


async def probe_first(binary: Any, bound: float) -> dict[str, Any]:
    """Probes ``binary`` once with ``bound`` before its first scenario. harness.probe caches the answer (a failure
    too) per binary, so the executor's own probe, bounded at 20 s, then finds it; a failure still makes every item
    on that binary an error of kind environment, now only after the measured bound. Anything else it raises is
    only noted: the executor's probe meets it again and reports it per item, as before."""
    from harness.probe import probe_binary

    started = time.monotonic()
    error: str | None = None
    try:
        await asyncio.to_thread(probe_binary, binary, bound)
    except Exception as exc:  # recorded here; the executor's probe raises it again per item
        error = f"{type(exc).__name__}: {exc}"
    seconds = round(time.monotonic() - started, 2)
    return {
        "binary": str(getattr(binary, "path", binary)),
        "bound_s": round(bound, 1),
        "seconds": seconds,
        "error": error,
    }


def _note_probe(share: Path, probe: dict[str, Any]) -> None:
    info = json.loads((share / RUNNER).read_text()) if (share / RUNNER).exists() else {}
    info.setdefault("probes", []).append(probe)
    (share / RUNNER).write_text(json.dumps(info))


async def run_request(request: Request, share: Path, boot_s: float | None = None) -> int:
    kernel = os.uname().release
    items = [(scenario, binary, None) for binary in request.binaries for scenario in request.scenarios]
    items += getattr(request, "pairs", [])  # a request pickled before pairs existed has none
    try:
        from harness.executor import execute
    except ImportError as exc:
        for scenario, binary, destination in items:
            label = binary if destination is None else pair_key(binary, destination)
            _append(share, _error_record(scenario, label, f"harness.executor is not available: {exc}"))
        return 1
    allocator = MdevAllocator(request.personalities, request.unavailable_note)
    kmsg = KernelLog()
    failures = 0
    probed: set[str] = set()
    for scenario, binary, destination in items:
        # Each binary's first launch in L1 (a pair's destination too) under the boot-derived bound.
        for side in (binary, destination):
            if side is not None and str(side.path) not in probed:
                probed.add(str(side.path))
                _note_probe(share, await probe_first(side, probe_bound(boot_s)))
        started = time.monotonic()
        # In the writable share, so the host can keep the logs of an item that went wrong (--keep-logs).
        (share / LOGS).mkdir(exist_ok=True)
        column = str(binary.version) if destination is None else f"{binary.version}->{destination.version}"
        workdir = Path(tempfile.mkdtemp(prefix=f"{item_log_name(scenario.id, column)}-", dir=share / LOGS))
        # A cross-version item: the destination on its own binary, exactly as the executor runs it on the host.
        cross: dict[str, Any] = {"destination_binary": destination} if destination is not None else {}
        try:
            outcome = await asyncio.wait_for(
                execute(
                    scenario, binary, workdir=workdir, allocator=allocator, timeout=request.wait_timeout_s, **cross
                ),
                request.scenario_timeout_s,
            )
        except Exception as exc:  # the executor's own bugs: keep going, say what happened
            failures += 1
            traceback.print_exc()
            label = binary if destination is None else pair_key(binary, destination)
            _append(share, _error_record(scenario, label, f"{type(exc).__name__}: {exc}", exc))
            continue
        finally:
            allocator.release_all()
        outcome.kernel = kernel
        outcome.vfio_provider = PROVIDER_NAME
        outcome.extra.setdefault("lab_variant", request.variant)
        outcome.extra["lab_logs"] = str(workdir.relative_to(share))
        if outcome.duration_s is None:
            outcome.duration_s = round(time.monotonic() - started, 3)
        transitions = kmsg.transitions(_device_labels(outcome))
        if transitions:
            outcome.extra["kernel_vfio_transitions"] = transitions
        _append(share, outcome.to_json())
    return 1 if failures else 0


async def smoke(share: Path) -> int:
    """One fixed end-to-end check without the executor: postcopy-ram with a migratable mtty device."""
    from qemu.qmp import QMPClient, QMPError

    allocator = MdevAllocator()
    device = allocator.allocate(DeviceSpec("vfio-pci", id="vfio0"))
    sock = Path(tempfile.mkdtemp(dir="/tmp")) / "smoke.qmp"
    argv = [
        "/usr/bin/qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
        "-m", "128", "-serial", "none", "-monitor", "none",
        "-device", f"vfio-pci,sysfsdev={device.properties['sysfsdev']},id=vfio0,"
        "x-device-dirty-page-tracking=off,enable-migration=on",
        "-qmp", f"unix:{sock},server=on,wait=off",
    ]  # fmt: skip
    report: dict[str, Any] = {"mdev": device.host_name, "argv": argv}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    client = QMPClient("smoke")
    try:
        for _ in range(200):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        await client.connect(str(sock))
        await client.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "postcopy-ram", "state": True}]})  # fmt: skip
        try:
            await client.execute("migrate", {"uri": "unix:/tmp/smoke-nobody.sock"})
            report["migrate"] = "accepted"
        except QMPError as exc:
            report["migrate_error"] = str(exc)
        report["status"] = (await client.execute("query-status"))["status"]  # type: ignore[index]
        report["query_migrate"] = await client.execute("query-migrate")
    finally:
        await client.disconnect()
        proc.kill()
        report["stderr"] = proc.communicate()[1]
        allocator.release(device)
    (share / "smoke.json").write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the VFIO lab's in-guest runner")
    parser.add_argument("--share", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    share: Path = args.share
    boot_s = _uptime()
    (share / RUNNER).write_text(
        json.dumps({"kernel": os.uname().release, "uptime_at_start": boot_s, "pid": os.getpid()})
    )
    request_path = share / REQUEST
    try:
        if args.smoke or not request_path.exists():
            status = asyncio.run(smoke(share))
        else:
            with request_path.open("rb") as fh:
                request: Request = pickle.load(fh)
            status = asyncio.run(run_request(request, share, boot_s))
    finally:
        info = json.loads((share / RUNNER).read_text())
        info["uptime_at_end"] = _uptime()
        (share / RUNNER).write_text(json.dumps(info))
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
        (share / "dmesg.txt").write_text(dmesg)
    return status


if __name__ == "__main__":
    sys.exit(main())
