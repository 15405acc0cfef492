"""Builds the VFIO lab's L1 guest image from Debian packages: kernel, mtty personalities, initramfs.

Nothing is installed on the host: the kernel, headers, kbuild and source packages are fetched with
``apt-get download`` into the cache and unpacked with ``dpkg -x``. The result is keyed by a content hash
of everything that shapes it (the resolved package versions, the files under images/lab/, RECIPE_VERSION
and the compiler), so a second build is a directory lookup and any input change rebuilds. The cache, apt and
command plumbing is the build kit's (harness.buildkit); one build at a time holds the folder's lock.

Layout under ``$MIGCONFORM_CACHE/lab`` (default ``<repo>/.cache/lab``)::

    .lock                       held by the build that is running (harness.buildkit.Store)
    debs/                       downloaded .deb files (kept, shared by all builds)
    kernel/<version>/           unpacked packages of one kernel version (shared by builds)
    busybox/<version>/          the unpacked busybox-static the initramfs carries
    apt/, toolchain/<key>/      the private apt index and the newer suites' chroots (harness.vfio_lab.toolchain)
    <hash>/manifest.json        the finished image (see LabImage), plus vmlinuz and the initramfs files

Run ``python -m harness.vfio_lab.build [--series S]`` to build (or find) the image and print its manifest;
``--list`` prints the table of lab kernels (harness.vfio_lab.kernels) and which are built.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import lzma
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.buildkit import Apt, InputDigest, Store, extract_vmlinux
from harness.vfio_lab.kernel import (
    KERNEL_SERIES,
    MTTY_SOURCES,
    VFIO_SOURCES,
    KernelPackages,
    LabBuildError,
    module_closure,
    modules_path,
    resolve_cached,
    resolve_kernel,
    runner,
    unpack_kernel,
    vmlinuz_path,
)
from harness.vfio_lab.kernels import (
    ALL_PERSONALITIES,
    LabKernel,
    Recipe,
    available_lab_kernels,
    lab_cache,
    lab_kernel,
    lab_kernels,
)
from harness.vfio_lab.toolchain import Toolchain, private_apt, toolchain_for

# What other modules use; KERNEL_SERIES, KernelPackages, LabBuildError and resolve_kernel live in
# harness.vfio_lab.kernel and are offered here too, where callers have always found them.
__all__ = [
    "ALL_PERSONALITIES",
    "KERNEL_SERIES",
    "REPO",
    "KernelPackages",
    "LabBuildError",
    "LabImage",
    "build",
    "lab_cache",
    "main",
    "resolve_kernel",
]

# Part of the cache key: change it (to any new text) whenever a change here alters the image it builds.
RECIPE_VERSION = "lab-1"

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images" / "lab"

# Modules the guest needs from the kernel package (their dependencies are added from modules.dep).
KERNEL_MODULES = (
    "kernel/net/9p/9pnet_virtio.ko",
    "kernel/fs/9p/9p.ko",
    "kernel/drivers/vfio/vfio.ko",
    "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "kernel/drivers/vfio/mdev/mdev.ko",
)
# Needed only where the kernel has them as modules (6.1 builds virtio's PCI transport as a module;
# 6.12 has it built in).
OPTIONAL_KERNEL_MODULES = ("kernel/drivers/virtio/virtio_pci.ko",)
# Initramfs variants: the stock vfio.ko (device dirty reports fail) and the rebuilt one (they work).
VARIANTS = ("stock", "iovabm")
# Each series' recipe, from the table of lab kernels (harness.vfio_lab.kernels).
RECIPES: dict[str, Recipe] = {k.series: k.recipe for k in lab_kernels()}


@dataclass
class LabImage:
    """A finished lab build: what boot.py needs, and what results record."""

    directory: str
    key: str
    kernel_release: str
    kernel_package_version: str
    series: str
    vmlinuz: str
    vmlinux: str | None  # the uncompressed ELF (PVH entry): boots faster under TCG
    initramfs: dict[str, str]  # variant -> path
    personalities: list[str]  # personalities the guest offers (harness.vfio_lab.mdev)
    unavailable_note: str  # why the others are missing, for skip reasons
    busybox_version: str
    build_seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LabImage:
        return cls(**json.loads(path.read_text()))


def _inputs_hash(pkgs: KernelPackages, busybox_version: str, compiler: str) -> str:
    return (
        InputDigest()
        .text("kernel", json.dumps(pkgs.identity(), sort_keys=True))
        .text("busybox", busybox_version)
        .text("compiler", compiler)
        .text("builder", RECIPE_VERSION)
        .folder("image", IMAGES)
        .key()
    )


def _build_mtty(
    recipe: Recipe, kernel: Path, pkgs: KernelPackages, tools: Toolchain, work: Path, log: Path
) -> list[Path]:
    """Builds the mtty personalities and mdpy; returns the .ko files in load order."""
    moddir = work / "mtty"
    moddir.mkdir()
    src = kernel / "src" / f"linux-source-{pkgs.series}"
    for rel in MTTY_SOURCES:
        shutil.copy(src / rel, moddir)
    if recipe.personality_patch:
        patch = str(IMAGES / recipe.personality_patch)
        argv = ["patch", "-p1", "--no-backup-if-mismatch", "-i", patch]
        runner().run(argv, what="applying the personality patch", cwd=moddir, log=log)
    kbuild_file = IMAGES / recipe.kbuild_dir / "Kbuild"
    kbuild = kbuild_file.read_text()
    shutil.copy(kbuild_file, moddir / "Kbuild")
    objects = re.search(r"^obj-m\s*:=\s*(.+)$", kbuild, re.M)
    if objects is None:
        raise LabBuildError(f"{kbuild_file} has no 'obj-m :=' line")
    modules = [o.removesuffix(".o") for o in objects.group(1).split()]
    for module in modules:
        if module.startswith("mtty") and module != "mtty":
            shutil.copy(moddir / "mtty.c", moddir / f"{module}.c")
    tools.make_modules(runner(), kernel / "x", pkgs.release, moddir, log)
    return [moddir / f"{m}.ko" for m in modules]


def _build_vfio(kernel: Path, pkgs: KernelPackages, tools: Toolchain, work: Path, log: Path) -> Path:
    moddir = work / "vfio-iovabm"
    moddir.mkdir()
    src = kernel / "src" / f"linux-source-{pkgs.series}"
    for rel in VFIO_SOURCES:
        shutil.copy(src / rel, moddir)
    shutil.copy(IMAGES / "vfio-iovabm/Kbuild", moddir / "Kbuild")
    tools.make_modules(runner(), kernel / "x", pkgs.release, moddir, log)
    return moddir / "vfio.ko"


def _strip(src: Path, dest: Path) -> None:
    data = lzma.decompress(src.read_bytes()) if src.suffix == ".xz" else src.read_bytes()
    dest.write_bytes(data)
    runner().run(["strip", "--strip-debug", str(dest)], what=f"stripping {dest.name}")


def _write_initramfs(work: Path, busybox: Path, modules: Sequence[tuple[Path, str]], out: Path, log: Path) -> None:
    """A gzip'd newc cpio: busybox, /init, and the modules with their load order."""
    root = work / f"root-{out.stem}"
    for sub in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin/busybox")
    init = root / "init"
    shutil.copy(IMAGES / "init.sh.in", init)
    init.chmod(0o755)
    order = []
    for path, params in modules:
        _strip(path, root / "lib/modules" / path.name.removesuffix(".xz"))
        order.append(f"{path.name.removesuffix('.xz')} {params}".strip())
    (root / "lib/modules/load-order").write_text("\n".join(order) + "\n")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = ("\n".join(files) + "\n").encode()
    cpio = subprocess.run(
        [str(busybox), "cpio", "-o", "-H", "newc"], input=listing, cwd=root, capture_output=True, check=False
    )
    if cpio.returncode != 0:
        raise LabBuildError(f"busybox cpio failed: {cpio.stderr.decode(errors='replace')}")
    with gzip.open(out, "wb", compresslevel=6) as fh:
        fh.write(cpio.stdout)
    with log.open("a") as fh:
        fh.write(f"initramfs {out}: {len(files)} entries, {out.stat().st_size} bytes\n")


def build(series: str | None = KERNEL_SERIES, *, force: bool = False) -> LabImage:
    """Builds the lab image of a kernel series (a row of harness.vfio_lab.kernels; None: the default) or
    returns the cached one with the same inputs; one build at a time per cache."""
    started = time.monotonic()
    try:
        row = lab_kernel(series)
    except ValueError as exc:
        raise LabBuildError(str(exc)) from None
    store = Store(lab_cache())
    with store.locked():
        apt = _apt_for(row, store.root)
        pkgs, busybox_version = resolve_cached(store.root, row, apt, force=force)
        tools = toolchain_for(row, store.root, runner())
        key = _inputs_hash(pkgs, busybox_version, tools.describe(runner()))
        found = store.find(key)
        if found is not None and not force:
            with contextlib.suppress(TypeError, ValueError, KeyError):  # a manifest from an older builder: rebuild
                return LabImage.load(found / "manifest.json")
        kernel = unpack_kernel(store.root, pkgs, with_vfio=row.recipe.rebuild_vfio, apt=apt)
        busybox = _unpack_busybox(busybox_version, store.root / "debs")
        with store.publishing(key) as work:
            image = _assemble(work, store.path(key), row, pkgs, kernel, busybox, busybox_version, tools)
            image.build_seconds = round(time.monotonic() - started, 2)
            (work / "manifest.json").write_text(json.dumps(asdict(image), indent=2) + "\n")
        _prune(image)
    return image


def _apt_for(row: LabKernel, cache: Path, *, refresh: bool = False) -> Apt:
    """The machine's apt, or the lab's private one for a row from a suite the machine does not list."""
    if row.apt == "system":
        return Apt(runner())
    return Apt(runner(), config=private_apt(cache, runner(), refresh=refresh))


def _unpack_busybox(version: str, debs: Path) -> Path:
    """The guest's busybox-static (the host's may differ), unpacked once per version."""
    trees = Store(lab_cache() / "busybox")
    found = trees.find(version, "bin/busybox")
    if found is None:
        with trees.publishing(version) as tree:
            deb = Apt(runner()).download("busybox-static", version, debs)
            runner().run(["dpkg", "-x", str(deb), str(tree)], what=f"unpacking {deb.name}")
        found = trees.path(version)
    return found / "bin/busybox"


def _assemble(
    work: Path,
    out: Path,
    row: LabKernel,
    pkgs: KernelPackages,
    kernel: Path,
    busybox: Path,
    busybox_version: str,
    tools: Toolchain,
) -> LabImage:
    """Builds the modules, initramfs variants and kernel files into ``work`` (published as ``out``)."""
    log = work / "build.log"
    recipe = row.recipe
    modroot = modules_path(kernel / "x", pkgs.release)
    mtty = _build_mtty(recipe, kernel, pkgs, tools, work, log)
    iovabm_vfio = _build_vfio(kernel, pkgs, tools, work, log) if recipe.rebuild_vfio else None
    variants = VARIANTS if iovabm_vfio is not None else ("stock",)
    present = [rel for rel in OPTIONAL_KERNEL_MODULES if any(modroot.glob(rel + "*"))]
    stock = module_closure(modroot, (*present, *KERNEL_MODULES))
    # mtty's dev_dbg lines trace the migration state machine in the guest's dmesg.
    lab = [(ko, "dyndbg=+p" if ko.name.startswith("mtty") else "") for ko in mtty]
    for variant in variants:
        mods = [(p, "") for p in stock]
        if variant == "iovabm" and iovabm_vfio is not None:
            mods = [((iovabm_vfio if p.name.startswith("vfio.ko") else p), "") for p in stock]
        _write_initramfs(work, busybox, [*mods, *lab], work / f"initramfs-{variant}.gz", log)
    shutil.copy(vmlinuz_path(kernel / "x", pkgs.release), work / "vmlinuz")
    for sub in ("mtty", "vfio-iovabm"):
        if not (work / sub).exists():
            continue
        for path in (work / sub).glob("*.ko"):
            (work / "modules").mkdir(exist_ok=True)
            shutil.copy(path, work / "modules" / ("vfio-iovabm.ko" if sub == "vfio-iovabm" else path.name))
        shutil.rmtree(work / sub)
    for root in work.glob("root-*"):
        shutil.rmtree(root)
    return LabImage(
        directory=str(out),
        key=out.name,
        kernel_release=pkgs.release,
        kernel_package_version=pkgs.version,
        series=pkgs.series,
        vmlinuz=str(out / "vmlinuz"),
        vmlinux=str(out / "vmlinux") if extract_vmlinux(work / "vmlinuz", work / "vmlinux") else None,
        initramfs={v: str(out / f"initramfs-{v}.gz") for v in variants},
        personalities=list(recipe.personalities),
        unavailable_note=recipe.note,
        busybox_version=busybox_version,
        extra={"compiler": tools.compiler, "toolchain": row.toolchain or "host", "suites": ",".join(row.suites)},
    )


def _prune(current: LabImage) -> None:
    """Removes older builds of the same kernel series (about 75 MB each); the newest other one stays."""
    others = []
    for manifest in lab_cache().glob("*/manifest.json"):
        if manifest.parent.name == current.key:
            continue
        try:
            series = json.loads(manifest.read_text()).get("series")
        except (OSError, ValueError):
            continue
        if series == current.series:
            others.append(manifest.parent)
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[1:]:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    known = ", ".join(k.series for k in lab_kernels())
    parser.add_argument("--series", default=KERNEL_SERIES, help=f"kernel series: {known} (default {KERNEL_SERIES})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has this build")
    parser.add_argument("--resolve-only", action="store_true", help="print the kernel release that would be used")
    parser.add_argument("--list", action="store_true", help="print the lab kernels and which are built (JSON)")
    parser.add_argument(
        "--refresh-apt", action="store_true", help="fetch the private apt index of the newer suites again"
    )
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps(available_lab_kernels(), indent=2))
        return 0
    try:
        row = lab_kernel(args.series)
        if args.refresh_apt and row.apt == "private":
            with Store(lab_cache()).locked():
                _apt_for(row, lab_cache(), refresh=True)
        if args.resolve_only:
            with Store(lab_cache()).locked():
                apt = _apt_for(row, lab_cache())
            print(json.dumps(asdict(resolve_kernel(row, apt)), indent=2))
            return 0
        started = time.monotonic()
        image = build(args.series, force=args.force)
    except (LabBuildError, ValueError) as exc:
        print(f"vfio lab build failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(image), indent=2))
    print(f"ready in {time.monotonic() - started:.1f} s: {image.directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
