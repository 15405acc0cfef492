"""``migconform certify --vfio-provider mtty``, the host's side: boot the lab once with a certification request
and copy the bundle its L1 guest wrote back to ``-o DIR``.

The guest's side (harness.vfio_lab.certify_inside) runs harness.certify.certify on the lab's mdev devices, and
harness.certify's command line calls :func:`certify_in_lab`; this module holds what the two sides share (the
request and the file names in the share) so that neither imports the other's importer.
"""

from __future__ import annotations

import asyncio
import compileall
import json
import pickle
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import LabError

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

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


class LabCertifyError(LabError):
    """The lab cannot certify the personality, or its L1 guest wrote no bundle; the message names its logs."""


@dataclass
class CertifyRequest:
    personality: str
    binaries: list[Any]  # harness.binaries.QemuBinary
    only: list[str] = field(default_factory=list)
    variant: str = "stock"
    timeout: float = 30.0
    devices: int = DEVICES


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
    from harness.vfio_lab.boot import DEFAULT_QEMU, choose_accel, l1_argv, run_l1_retrying
    from harness.vfio_lab.build import REPO, lab_cache

    lab = MttyLabProvider(variant, qemu=qemu)
    image = lab.image
    if personality not in image.personalities:
        raise LabCertifyError(
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
    run, failed_boots = await run_l1_retrying(argv, share, serial, budget)
    bundle_dir = share / BUNDLE_DIR
    bundle_json = bundle_dir / "certify.json"
    if not bundle_json.exists():
        why = (share / ERROR_FILE).read_text().strip() if (share / ERROR_FILE).exists() else ""
        state = "timed out" if run.timed_out else f"L1 exited with status {run.status}"
        raise LabCertifyError(
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
        "failed_boots": [failed.to_json() for failed in failed_boots],
    }
    (output / "certify.json").write_text(json.dumps(bundle, indent=1) + "\n")
    return bundle
