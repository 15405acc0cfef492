"""``migconform certify --vfio-provider mtty``: the lab's mdev devices play the vendor's hardware.

Inside the lab's L1 guest an mdev instance is a real VFIO device (its own IOMMU group, /dev/vfio node,
device-feature ioctls), so the very certification a vendor runs on a PCI device runs on it unchanged:
this module creates mdev instances of one personality, hands their sysfs paths to the ``host``
provider, and runs harness.certify.certify on them; the bundle lands in the lab's share and the host
copies it to ``-o DIR``.

One lab-specific wrinkle: mtty keeps its migration state across close/open and QEMU never resets it
(docs/vfio-lab.md P4), where a real device is reset when QEMU opens it. So after every QEMU launch the
instance is removed and created again under the same UUID: the host provider sees the same device,
always in its initial state.

The lab's /init always runs ``python -S $labpyopts -m harness.vfio_lab.inside --share DIR``; the host
side boots it with ``labpyopts=-mharness.vfio_lab.certify_inside``, so Python runs this module and the
rest of that line (``-m harness.vfio_lab.inside --share DIR``) arrives as arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.scenario import DeviceSpec
from harness.vfio.allocator import AllocatedDevice

if TYPE_CHECKING:
    from harness.binaries import QemuBinary
    from harness.vfio.host import HostVfioDevice

REQUEST = "certify-request.pickle"
BUNDLE_DIR = "bundle"
ERROR_FILE = "certify-error.txt"
RUNNER = "runner.json"  # harness.vfio_lab.boot measures the runner's start by this file
PYOPTS = "labpyopts=-mharness.vfio_lab.certify_inside"
# Two per VFIO device of a scenario (source and destination hold theirs at once): the two-device
# scenarios need four.
DEVICES = 4
BOOT_BUDGET_S = 90.0
PER_SCENARIO_BUDGET_S = 45.0
SUITE_SIZE_GUESS = 25


@dataclass
class CertifyRequest:
    personality: str
    binaries: list[Any]  # harness.binaries.QemuBinary
    only: list[str] = field(default_factory=list)
    variant: str = "stock"
    timeout: float = 30.0
    devices: int = DEVICES


class ResettingAllocator:
    """The host allocator, plus a fresh instance under the same UUID after each launch (see above)."""

    name = "host"

    def __init__(self, devices: Sequence[HostVfioDevice], type_dirs: dict[str, Path]) -> None:
        from harness.vfio.host import HostDeviceAllocator

        self._inner = HostDeviceAllocator(devices)
        self._type_dirs = type_dirs  # uuid -> mdev_supported_types/<type>
        self._sysfs = {d.vbasedev_name: Path(d.sysfs) for d in devices}

    def allocate(self, device: DeviceSpec) -> AllocatedDevice:
        return self._inner.allocate(device)

    def release(self, device: AllocatedDevice) -> None:
        recreate(device.host_name, self._sysfs[device.host_name], self._type_dirs[device.host_name])
        self._inner.release(device)


def remove_mdev(path: Path) -> None:
    """Removes an instance; QEMU may still be closing it, so retry briefly."""
    deadline = time.monotonic() + 5.0
    while (path / "remove").exists():
        try:
            (path / "remove").write_text("1")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def recreate(name: str, path: Path, type_dir: Path) -> None:
    remove_mdev(path)
    (type_dir / "create").write_text(name)


def create_devices(personality: str, count: int) -> tuple[list[Path], dict[str, Path]]:
    """``count`` instances of the personality's mdev type: (sysfs paths, uuid -> type dir)."""
    from harness.vfio_lab.mdev import MDEV_DEVICES, MdevAllocator

    type_dir = MdevAllocator().type_dir(personality)
    paths = []
    types = {}
    for _ in range(count):
        name = str(uuid.uuid4())
        (type_dir / "create").write_text(name)
        paths.append(MDEV_DEVICES / name)
        types[name] = type_dir
    return paths, types


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def run_inside(share: Path) -> int:
    from harness.certify import certify
    from harness.vfio.host_provider import HostProvider

    with (share / REQUEST).open("rb") as fh:
        request: CertifyRequest = pickle.load(fh)
    paths, types = create_devices(request.personality, request.devices)
    try:
        provider = HostProvider(
            [str(p) for p in paths],
            dirty_report_works=request.variant == "iovabm",
            timeout=request.timeout,
            allocator_factory=lambda devices: ResettingAllocator(devices, types),
        )
        bundle = certify(
            provider,
            request.binaries,
            share / BUNDLE_DIR,
            only=request.only,
            provider_label="mtty-lab",
            extra={"lab_variant": request.variant, "lab_personality": request.personality},
            progress=False,
        )
    finally:
        for path in paths:
            try:
                remove_mdev(path)
            except OSError:
                traceback.print_exc()
    return 0 if bundle["verdict"] == "pass" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="certification inside the VFIO lab guest")
    parser.add_argument("--share", type=Path, required=True)
    args, _ = parser.parse_known_args(argv)  # the "-m harness.vfio_lab.inside" that /init appends
    share: Path = args.share
    (share / RUNNER).write_text(json.dumps({"kernel": os.uname().release, "uptime_at_start": _uptime()}))
    status = 2
    try:
        status = run_inside(share)
    except Exception as exc:
        traceback.print_exc()
        (share / ERROR_FILE).write_text(f"{type(exc).__name__}: {exc}\n")
    finally:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
        (share / "dmesg.txt").write_text(dmesg)
    return status


# --- the host side -------------------------------------------------------------------------------------


async def certify_in_lab(
    personality: str,
    binaries: Sequence[QemuBinary],
    output: Path,
    *,
    only: Sequence[str] = (),
    variant: str = "stock",
    timeout: float = 30.0,
    qemu: str | None = None,
) -> dict[str, Any]:
    """Boots the lab once, certifies ``personality`` mdevs inside, copies the bundle to ``output``."""
    from harness.vfio.provider import MttyLabProvider
    from harness.vfio_lab.boot import DEFAULT_QEMU, _run_l1, choose_accel, l1_argv
    from harness.vfio_lab.build import REPO, lab_cache

    lab = MttyLabProvider(variant, qemu=qemu)
    image = lab.image
    if personality not in image.personalities:
        raise RuntimeError(
            f"the lab for kernel {image.kernel_release} cannot supply {personality!r}: {image.unavailable_note}"
        )
    for package in ("contract", "harness", "reference_impl"):
        compileall.compile_dir(REPO / package, quiet=1)
    runs = lab_cache() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    share = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-certify-"), dir=runs))
    request = CertifyRequest(personality, list(binaries), list(only), lab.variant, timeout)
    with (share / REQUEST).open("wb") as fh:
        pickle.dump(request, fh)
    qemu_path = qemu or DEFAULT_QEMU
    accel = await asyncio.to_thread(choose_accel, image, qemu_path)
    serial = share / "serial.log"
    argv = l1_argv(image, lab.variant, share, serial, accel, qemu=qemu_path, cmdline_extra=PYOPTS)
    scenarios = len(only) or SUITE_SIZE_GUESS
    budget = BOOT_BUDGET_S + PER_SCENARIO_BUDGET_S * scenarios * len(binaries)
    run = await _run_l1(argv, serial, budget, ready_file=share / RUNNER)
    bundle_dir = share / BUNDLE_DIR
    bundle_json = bundle_dir / "certify.json"
    if not bundle_json.exists():
        why = (share / ERROR_FILE).read_text().strip() if (share / ERROR_FILE).exists() else ""
        state = "timed out" if run.timed_out else f"L1 exited with status {run.status}"
        raise RuntimeError(
            f"the lab wrote no certification bundle ({state}{'; ' + why if why else ''}); "
            f"serial log {serial}, runner log {share / 'runner.stderr'}"
        )
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(bundle_dir, output)
    bundle: dict[str, Any] = json.loads((output / "certify.json").read_text())
    bundle["lab"] = {
        "run": str(share),
        "serial_log": str(serial),
        "l1_accel": accel.accel,
        "l1_accel_reason": accel.reason,
        "timed_out": run.timed_out,
    }
    (output / "certify.json").write_text(json.dumps(bundle, indent=1) + "\n")
    return bundle


if __name__ == "__main__":
    sys.exit(main())
