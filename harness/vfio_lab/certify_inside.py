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
side (harness.vfio_lab.certify_lab) boots it with ``labpyopts=-mharness.vfio_lab.certify_inside``, so Python
runs this module and the rest of that line (``-m harness.vfio_lab.inside --share DIR``) arrives as arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contract.scenario import DeviceSpec
from harness.certify import certify
from harness.vfio.allocator import AllocatedDevice
from harness.vfio_lab.certify_lab import BUNDLE_DIR, ERROR_FILE, REQUEST, RUNNER, CertifyRequest

if TYPE_CHECKING:
    from harness.vfio.host import HostVfioDevice


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


if __name__ == "__main__":
    sys.exit(main())
