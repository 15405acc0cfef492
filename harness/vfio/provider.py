"""VFIO providers by name: where the host side of a scenario's vfio-pci devices comes from.

``mtty`` is the hardware-free lab (docs/vfio-lab.md): one nested L1 guest per batch, running Debian's
kernel with the mtty mdev sample, in which every scenario runs through harness.executor with a fresh
mdev per QEMU launch. The guest's kernel decides one host fact the model needs, whether device dirty
reports work (docs/vfio-lab.md P3), so the provider is built for one initramfs variant:

- ``variant="stock"`` (default; also ``dirty-report="fails"``): Debian's vfio.ko, whose iova_bitmap
  stubs make every DMA-logging report fail. This is what a user of Debian's kernel gets.
- ``variant="iovabm"`` (also ``dirty-report="works"``): the lab's rebuilt vfio.ko, reports work.

Other options: ``qemu`` (the L1 QEMU binary), ``series`` (Debian kernel series of the guest, a row of
harness.vfio_lab.kernels; ``migconform run --lab-kernel S`` sets it), ``timeout`` (seconds for the whole batch;
default scales with its size).
"""

from __future__ import annotations

import asyncio
import compileall
import json
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario
from harness.errors import HostEnvironmentError, ResourceUnavailable

if TYPE_CHECKING:
    from harness.binaries import QemuBinary
    from harness.vfio_lab.boot import BootResult
    from harness.vfio_lab.build import LabImage

PROVIDERS = ("mtty", "host")
VARIANT_ALIASES = {"stock": "stock", "iovabm": "iovabm", "fails": "stock", "works": "iovabm"}
# Budget of one batch: the boot (measured 4-11 s under load) plus a generous bound per scenario (the
# slowest measured, a completed migration pair, takes about 3 s).
BOOT_BUDGET_S = 90.0
PER_SCENARIO_BUDGET_S = 45.0
KEEP_RUNS = 20
ACTIVE_RUN_S = 2 * 3600.0


class VfioProvider(Protocol):
    """What every provider offers the runner (harness.runner.VfioProvider is the subset it uses)."""

    @property
    def name(self) -> str: ...

    @property
    def kernel(self) -> str:
        """The kernel the VFIO devices are driven by (recorded in every outcome)."""
        ...

    async def run_batch(self, scenarios: Sequence[Scenario], binaries: Sequence[QemuBinary]) -> list[Outcome]: ...

    def host_facts(self) -> HostFacts: ...


class LabRunError(ResourceUnavailable):
    """The lab guest returned no outcomes (it did not boot, or ran out of time); the message says why and
    where its logs are. A VFIO lab the run was promised and did not get: an environment error of every VFIO
    item, never a skip."""

    def __init__(self, message: str) -> None:
        super().__init__("the VFIO lab", message)


def lab_item_error(reason: str, typed: Mapping[str, Any] | None) -> Exception:
    """The exception the lab's executor raised for one item, rebuilt on the host: a host-environment error
    (e.g. ResourceUnavailable: the mdev pool ran out) keeps its class; anything else is a RuntimeError."""
    if isinstance(typed, Mapping):
        what, detail = str(typed.get("what", "")), str(typed.get("detail", ""))
        if typed.get("class") == "ResourceUnavailable":
            return ResourceUnavailable(what, detail)
        return HostEnvironmentError(what, detail)
    return RuntimeError(f"the executor in the VFIO lab raised {reason}")


class MttyLabProvider:
    """The nested mtty lab as a VFIO provider."""

    name = "mtty"
    # Cross-version items go into the batch as pairs of binaries (harness.vfio_batch).
    runs_pairs = True

    def __init__(
        self,
        variant: str = "stock",
        *,
        qemu: str | None = None,
        series: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if variant not in VARIANT_ALIASES:
            raise ValueError(f"unknown lab variant {variant!r}: use stock (dirty reports fail) or iovabm (they work)")
        from harness.vfio_lab.kernels import lab_kernel

        self.variant = VARIANT_ALIASES[variant]
        self.qemu = qemu
        self.series = lab_kernel(series).series  # ValueError naming the known series
        self.timeout = timeout
        self._image: LabImage | None = None
        self.last_boot: BootResult | None = None
        self.last_run_dir: Path | None = None
        # (scenario id, binary path) -> why the executor raised instead of returning an outcome
        self.last_errors: dict[tuple[str, str], str] = {}
        # The same, as the exception the runner records for the item (harness.runner.run_vfio_batch).
        self.item_errors: dict[tuple[str, str], Exception] = {}

    @property
    def image(self) -> LabImage:
        """The lab build (cached on disk; built on first use)."""
        if self._image is None:
            from harness.vfio_lab.build import build

            self._image = build(self.series)
        return self._image

    @property
    def kernel(self) -> str:
        return self.image.kernel_release

    def host_facts(self) -> HostFacts:
        # Inside L1: 6.12 has userfaultfd with write-protect; L2 runs under TCG (no nested KVM).
        return HostFacts(
            userfaultfd=True,
            uffd_wp=True,
            kvm=False,
            vfio_dirty_report_works=self.variant == "iovabm",
            kernel=self.kernel,
        )

    async def run_batch(
        self,
        scenarios: Sequence[Scenario],
        binaries: Sequence[QemuBinary],
        pairs: Sequence[tuple[Scenario, QemuBinary, QemuBinary]] = (),
    ) -> list[Outcome]:
        """Boots the lab once and runs every scenario on every binary inside it, and each of ``pairs`` (a
        cross-version item: the source on the first binary, the destination on the second)."""
        if not pairs and (not scenarios or not binaries):
            return []
        from harness.vfio_lab.boot import DEFAULT_QEMU, boot
        from harness.vfio_lab.build import REPO, lab_cache
        from harness.vfio_lab.inside import LAB_ERROR, LAB_ERROR_TYPE, OUTCOMES, REQUEST, RUNNER, Request

        # The runner runs plain scenarios on the same event loop: a (cold) build must not block it.
        image = await asyncio.to_thread(lambda: self.image)
        await asyncio.to_thread(_precompile, REPO)
        runs = lab_cache() / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        _prune_runs(runs)
        share = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
        self.last_run_dir = share
        if self.variant not in image.initramfs:
            raise LabRunError(
                f"the lab for kernel {image.kernel_release} has no {self.variant!r} variant "
                f"(it has {', '.join(image.initramfs)})"
            )
        request = Request(
            scenarios=list(scenarios),
            binaries=list(binaries) if scenarios else [],
            variant=self.variant,
            personalities=list(image.personalities),
            unavailable_note=image.unavailable_note,
            pairs=list(pairs),
        )
        with (share / REQUEST).open("wb") as fh:
            pickle.dump(request, fh)
        count = len(request.scenarios) * len(request.binaries) + len(pairs)
        budget = self.timeout or BOOT_BUDGET_S + PER_SCENARIO_BUDGET_S * count
        result = await boot(image, self.variant, share, timeout=budget, qemu=self.qemu or DEFAULT_QEMU)
        self.last_boot = result
        for failed in result.failed_boots:
            print(f"mtty lab: L1 {failed.describe()}; booted again", file=sys.stderr)
        outcomes = []
        self.last_errors = {}
        self.item_errors = {}
        path = share / OUTCOMES
        if path.exists():
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                record = json.loads(line)
                if LAB_ERROR in record:
                    # No outcome for this one: the runner reports it as an error, and the reason is here.
                    key = (str(record["scenario"]), str(record["binary"]))
                    self.last_errors[key] = str(record[LAB_ERROR])
                    self.item_errors[key] = lab_item_error(str(record[LAB_ERROR]), record.get(LAB_ERROR_TYPE))
                    print(
                        f"mtty lab: {key[0]} on {key[1]}: the executor raised {record[LAB_ERROR]} "
                        f"(runner.stderr in {share})",
                        file=sys.stderr,
                    )
                    continue
                outcomes.append(Outcome.from_json(record))
        runner: dict[str, Any] = {}
        if (share / RUNNER).exists():
            runner = json.loads((share / RUNNER).read_text())
        for outcome in outcomes:
            outcome.extra.setdefault("lab_l1_accel", result.accel.accel)
            outcome.extra.setdefault("lab_run", str(share))
            outcome.extra.setdefault("lab_kernel", image.series)
            if result.failed_boots:
                outcome.extra.setdefault("lab_l1_failed_boots", [f.to_json() for f in result.failed_boots])
        if not outcomes and not self.last_errors:
            why = (
                f"timed out after {budget:.0f} s"
                if result.timed_out
                else f"L1 exited with status {result.returncode}, runner status {result.runner_exit}"
            )
            problems = f"; /init reported {result.problems}" if result.problems else ""
            problems += "".join(f"; before it, L1 {failed.describe()}" for failed in result.failed_boots)
            raise LabRunError(
                f"the VFIO lab returned no outcomes ({why}{problems}; runner {runner or 'never started'}); "
                f"serial log: {result.serial_log}"
            )
        return outcomes

    def cleanup(self) -> None:
        """Removes the last run's share folder (logs and outcomes)."""
        if self.last_run_dir is not None:
            shutil.rmtree(self.last_run_dir, ignore_errors=True)


def _precompile(repo: Path) -> None:
    """The guest imports the harness over 9p under TCG; compiling it there would cost seconds per boot."""
    for package in ("contract", "harness", "reference_impl"):
        compileall.compile_dir(repo / package, quiet=1)


def _last_write(folder: Path) -> float:
    """When the run last wrote: the runner appends to outcomes.jsonl after every scenario, which does not
    touch the folder's own mtime."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir() if p.is_file())])
    except OSError:
        return 0.0


def _prune_runs(runs: Path, now: float | None = None) -> None:
    """Keeps the newest KEEP_RUNS run folders (serial logs, dmesg, outcomes) for diagnosis, and every folder
    written to within ACTIVE_RUN_S: with a shared cache, other checkouts start batches while a long one
    (the bundled VFIO set on three QEMUs: half an hour under load) is still writing its outcomes."""
    now = time.time() if now is None else now
    folders = sorted((p for p in runs.iterdir() if p.is_dir()), key=_last_write, reverse=True)
    for old in folders[KEEP_RUNS:]:
        if now - _last_write(old) > ACTIVE_RUN_S:
            shutil.rmtree(old, ignore_errors=True)


def get_provider(name: str, options: Mapping[str, Any] | None = None) -> VfioProvider:
    """The provider called ``name``; ValueError for unknown names or options (the runner reports it).

    ``mtty`` is the lab (this module); ``host`` is real devices on this machine
    (harness.vfio.host_provider, which parses its own options).
    """
    if name == "mtty":
        return mtty_provider(options)
    if name == "host":
        try:
            from harness.vfio.host_provider import get_host_provider
        except ImportError as exc:
            raise ValueError(f"the host VFIO provider is not available in this installation: {exc}") from None
        return get_host_provider(options)
    raise ValueError(f"unknown VFIO provider {name!r} (available: {', '.join(PROVIDERS)})")


def mtty_provider(options: Mapping[str, Any] | None = None) -> MttyLabProvider:
    """The lab provider from its options: variant (or dirty-report), qemu, series, timeout."""
    opts = dict(options or {})
    variant = str(opts.pop("variant", opts.pop("dirty-report", "stock")))
    qemu = opts.pop("qemu", None)
    series = opts.pop("series", None)
    timeout = opts.pop("timeout", None)
    if opts:
        raise ValueError(f"unknown option(s) for provider mtty: {', '.join(sorted(opts))}")
    return MttyLabProvider(
        variant,
        qemu=None if qemu is None else str(qemu),
        series=None if series is None else str(series),
        timeout=None if timeout is None else float(timeout),
    )
