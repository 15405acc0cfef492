"""Builds the VFIO lab's L1 guest image from Debian packages: kernel, mtty personalities, initramfs.

Nothing is installed on the host: the kernel, headers, kbuild and source packages are fetched with
``apt-get download`` into the cache and unpacked with ``dpkg -x``. The result is keyed by a content hash
of everything that shapes it (the resolved package versions, the files under images/lab/, this builder's
own source and the compiler), so a second build is a directory lookup and any input change rebuilds.

Layout under ``$MIGCONFORM_CACHE/lab`` (default ``<repo>/.cache/lab``)::

    debs/                       downloaded .deb files (kept, shared by all builds)
    kernel/<version>/           unpacked packages of one kernel version (shared by builds)
    <hash>/manifest.json        the finished image (see LabImage), plus vmlinuz and the initramfs files

Run ``python -m harness.vfio_lab.build`` to build (or find) the image and print its manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import lzma
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contract.scenario import PERSONALITIES
from harness import errors, settings

# The one pin of the lab's kernel: the Debian kernel series. Which 6.12 release is used is decided at
# build time by resolve_kernel() (the newest one with every package we need), and recorded in results.
KERNEL_SERIES = "6.12"
FLAVOUR = "amd64"

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
# Source files taken from linux-source: the mdev samples and what vfio.ko is built from.
MTTY_SOURCES = ("samples/vfio-mdev/mtty.c", "samples/vfio-mdev/mdpy.c", "samples/vfio-mdev/mdpy-defs.h")
VFIO_SOURCES = (
    "drivers/vfio/vfio_main.c",
    "drivers/vfio/group.c",
    "drivers/vfio/container.c",
    "drivers/vfio/virqfd.c",
    "drivers/vfio/vfio.h",
    "drivers/iommu/iommufd/iova_bitmap.c",
)
# Initramfs variants: the stock vfio.ko (device dirty reports fail) and the rebuilt one (they work).
VARIANTS = ("stock", "iovabm")
ALL_PERSONALITIES = PERSONALITIES  # every personality a scenario may ask for


@dataclass(frozen=True)
class Recipe:
    """What the lab builds for one kernel series."""

    kbuild_dir: str  # folder under images/lab with the Kbuild of the mdev samples
    personality_patch: str | None  # patch applied to mtty.c (None: build the samples as shipped)
    rebuild_vfio: bool  # also build vfio.ko with iova_bitmap (the "iovabm" initramfs variant)
    personalities: tuple[str, ...]  # what harness.vfio_lab.mdev may hand out on this kernel
    note: str = ""


RECIPES = {
    KERNEL_SERIES: Recipe("mtty", "mtty/personality.patch", True, ALL_PERSONALITIES),
    # bookworm's own kernel: mtty gained migration in 6.7, so only mdpy-like devices exist here.
    "6.1": Recipe(
        "mtty-plain",
        None,
        False,
        ("no-migration",),
        note="the 6.1 kernel's mtty has no migration support (mtty.c gained it in 6.7)",
    ),
}


class LabBuildError(errors.BuildError):
    """A build step failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class KernelPackages:
    """One Debian kernel release and the package names that make it up."""

    series: str  # "6.12"
    abi: str  # "6.12.117+deb12"
    version: str  # Debian version, "6.12.117-1~deb12u1"
    kbuild: str  # package name of the kbuild tools (per ABI since 6.12, per series before)

    @property
    def release(self) -> str:
        """``uname -r`` of the guest."""
        return f"{self.abi}-{FLAVOUR}"

    @property
    def image(self) -> str:
        return f"linux-image-{self.release}-unsigned"

    @property
    def headers(self) -> str:
        return f"linux-headers-{self.release}"

    @property
    def headers_common(self) -> str:
        return f"linux-headers-{self.abi}-common"

    @property
    def source(self) -> str:
        return f"linux-source-{self.series}"

    def packages(self) -> list[str]:
        return [self.image, self.headers, self.headers_common, self.kbuild, self.source]


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


def lab_cache() -> Path:
    """The lab's folder in the set-up script's cache (harness.settings.cache_root)."""
    return settings.cache_root() / "lab"


def _run(argv: Sequence[str], *, cwd: Path | None = None, log: Path | None = None) -> str:
    """Runs a build command; on failure raises with the command and the tail of its output."""
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LabBuildError(f"{' '.join(argv)} failed with status {proc.returncode}:\n{tail}")
    return proc.stdout


def _version_key(version: str) -> tuple[int, ...]:
    """Orders Debian kernel versions well enough for picking the newest: their numbers, in order."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _madison(packages: Iterable[str]) -> dict[str, set[str]]:
    """Package -> versions apt knows (any source). One apt-cache call for all of them."""
    names = sorted(set(packages))
    proc = subprocess.run(["apt-cache", "madison", *names], capture_output=True, text=True, check=False)
    found: dict[str, set[str]] = {name: set() for name in names}
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] in found:
            found[parts[0]].add(parts[1])
    return found


def resolve_kernel(series: str = KERNEL_SERIES) -> KernelPackages:
    """The newest release of ``series`` for which image, headers (arch+common), kbuild and source exist.

    Debian's security updates replace kernel packages, so a fixed version would stop downloading; the
    choice is made here, once, from what apt currently offers.
    """
    names = _run(["apt-cache", "pkgnames", f"linux-image-{series}."]).split()
    pattern = re.compile(rf"^linux-image-({re.escape(series)}\.[^-]+(?:-\d+)?)-{FLAVOUR}-unsigned$")
    abis = sorted({m.group(1) for n in names if (m := pattern.match(n))}, key=_version_key, reverse=True)
    if not abis:
        raise LabBuildError(
            f"apt knows no linux-image-{series}.*-{FLAVOUR}-unsigned package: add the Debian source that "
            f"carries kernel {series} (bookworm-security for 6.12 and 6.1) and run apt-get update"
        )
    candidates = []
    for abi in abis:
        for kbuild in (f"linux-kbuild-{abi}", f"linux-kbuild-{series}"):
            candidates.append(KernelPackages(series, abi, "", kbuild))
    versions = _madison(p for c in candidates for p in c.packages())
    for cand in candidates:
        common = set.intersection(*(versions[p] for p in cand.packages()))
        if common:
            newest = max(common, key=_version_key)
            return KernelPackages(series, cand.abi, newest, cand.kbuild)
    raise LabBuildError(
        f"no {series} kernel release has all of linux-image-*-{FLAVOUR}-unsigned, linux-headers "
        f"(arch and common), linux-kbuild and linux-source-{series} at one version in apt's lists"
    )


APT_LISTS = Path("/var/lib/apt/lists")


def _apt_lists_state() -> str:
    """Changes whenever apt's package lists do (apt-get update): names, sizes and mtimes of the lists."""
    digest = hashlib.sha256()
    for path in sorted(APT_LISTS.glob("*Packages*")):
        info = path.stat()
        digest.update(f"{path.name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resolve_cached(series: str, *, force: bool = False) -> tuple[KernelPackages, str]:
    """resolve_kernel() and busybox's candidate, remembered until apt's lists change.

    The apt-cache calls cost seconds on a loaded host; their answers only change with apt-get update.
    """
    record = lab_cache() / f"resolved-{series}.json"
    state = _apt_lists_state()
    if not force:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(record.read_text())
            if data["apt_lists"] == state:
                return KernelPackages(**data["kernel"]), str(data["busybox"])
    pkgs = resolve_kernel(series)
    busybox_version = _candidate_version("busybox-static")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"apt_lists": state, "kernel": asdict(pkgs), "busybox": busybox_version}))
    return pkgs, busybox_version


def _candidate_version(package: str) -> str:
    out = _run(["apt-cache", "show", "--no-all-versions", package])
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise LabBuildError(f"apt has no candidate version of {package}")


def _download(debs: Path, package: str, version: str) -> Path:
    """The .deb of package=version in the cache, fetched with apt-get download when missing."""
    debs.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    found = sorted(debs.glob(pattern))
    if not found:
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=debs)
        found = sorted(debs.glob(pattern))
    if not found:
        raise LabBuildError(f"apt-get download {package}={version} left no {pattern} in {debs}")
    return found[0]


def _unpack_kernel(pkgs: KernelPackages, recipe: Recipe, debs: Path) -> Path:
    """Unpacks image, headers, kbuild and the needed source files of one release (once per version)."""
    root = lab_cache() / "kernel" / pkgs.version
    stamp = root / ".complete"
    if stamp.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pkgs.version}-", dir=root.parent))
    tree = tmp / "x"
    for name in (pkgs.image, pkgs.headers, pkgs.headers_common, pkgs.kbuild):
        _run(["dpkg", "-x", str(_download(debs, name, pkgs.version)), str(tree)])
    # P1: the arch headers' Makefile includes the common headers by their installed /usr/src path.
    headers = tree / "usr/src" / f"linux-headers-{pkgs.release}"
    makefile = headers / "Makefile"
    makefile.write_text(makefile.read_text().replace("include /usr/src/", f"include {root}/x/usr/src/"))
    # The source tarball is large; take only the files the lab compiles.
    src_deb = _download(debs, pkgs.source, pkgs.version)
    top = f"linux-source-{pkgs.series}"
    members = [f"{top}/{p}" for p in (*MTTY_SOURCES, *(VFIO_SOURCES if recipe.rebuild_vfio else ()))]
    src = tmp / "src"
    src.mkdir()
    deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(src_deb)], stdout=subprocess.PIPE)
    inner = subprocess.Popen(["tar", "-xO", f"./usr/src/{top}.tar.xz"], stdin=deb.stdout, stdout=subprocess.PIPE)
    assert deb.stdout is not None
    deb.stdout.close()
    extract = subprocess.run(
        ["tar", "-xJ", "--ignore-failed-read", "-C", str(src), *members],
        stdin=inner.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    inner.wait()
    deb.wait()
    missing = [m for m in members if not (src / m).exists()]
    if extract.returncode != 0 and missing:
        raise LabBuildError(f"unpacking {src_deb.name}: missing {missing}: {extract.stderr.strip()}")
    (tmp / ".complete").write_text(pkgs.version + "\n")
    tmp.rename(root)
    return root


def _inputs_hash(pkgs: KernelPackages, busybox_version: str, compiler: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(pkgs), sort_keys=True).encode())
    digest.update(busybox_version.encode())
    digest.update(compiler.encode())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(p for p in IMAGES.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(IMAGES)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _kernel_make(headers: Path, moddir: Path, log: Path) -> None:
    # P2: Debian's config wants pahole for module BTF; the lab does not need BTF.
    _run(
        ["make", "-C", str(headers), f"M={moddir}", "CONFIG_DEBUG_INFO_BTF_MODULES=", "-j2", "modules"],
        log=log,
    )


def _build_mtty(recipe: Recipe, kernel: Path, headers: Path, work: Path, log: Path) -> list[Path]:
    """Builds the mtty personalities and mdpy; returns the .ko files in load order."""
    moddir = work / "mtty"
    moddir.mkdir()
    src = kernel / "src" / f"linux-source-{_series_of(headers)}"
    for rel in MTTY_SOURCES:
        shutil.copy(src / rel, moddir)
    if recipe.personality_patch:
        patch = str(IMAGES / recipe.personality_patch)
        _run(["patch", "-p1", "--no-backup-if-mismatch", "-i", patch], cwd=moddir, log=log)
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
    _kernel_make(headers, moddir, log)
    return [moddir / f"{m}.ko" for m in modules]


def _build_vfio(kernel: Path, headers: Path, work: Path, log: Path) -> Path:
    moddir = work / "vfio-iovabm"
    moddir.mkdir()
    src = kernel / "src" / f"linux-source-{_series_of(headers)}"
    for rel in VFIO_SOURCES:
        shutil.copy(src / rel, moddir)
    shutil.copy(IMAGES / "vfio-iovabm/Kbuild", moddir / "Kbuild")
    _kernel_make(headers, moddir, log)
    return moddir / "vfio.ko"


def _series_of(headers: Path) -> str:
    return re.sub(r"^linux-headers-(\d+\.\d+).*$", r"\1", headers.name)


def _module_depends(path: Path) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo (module names, not files)."""
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    match = re.search(rb"\x00depends=([^\x00]*)\x00", data)
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def _module_closure(modroot: Path, wanted: Sequence[str]) -> list[Path]:
    """``wanted`` (paths relative to modroot) plus their dependencies, each after what it needs.

    Read from each module's own modinfo: the package ships no modules.dep (the installer's depmod
    writes it) and the host need not have kmod.
    """
    index = {p.name.split(".ko")[0].replace("-", "_"): p for p in (modroot / "kernel").rglob("*.ko*")}
    order: list[Path] = []

    def visit(path: Path) -> None:
        if path in order:
            return
        for dep in _module_depends(path):
            if dep.replace("-", "_") not in index:
                raise LabBuildError(f"{path.name} depends on {dep}, which {modroot} does not have")
            visit(index[dep.replace("-", "_")])
        order.append(path)

    for rel in wanted:
        matches = sorted(modroot.glob(rel + "*"))
        if not matches:
            raise LabBuildError(f"{modroot} has no {rel}")
        visit(matches[0])
    return order


def _strip(src: Path, dest: Path) -> None:
    data = lzma.decompress(src.read_bytes()) if src.suffix == ".xz" else src.read_bytes()
    dest.write_bytes(data)
    _run(["strip", "--strip-debug", str(dest)])


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


def _extract_vmlinux(bzimage: Path, out: Path) -> bool:
    """Decompresses the kernel ELF out of a bzImage; False when no payload is found.

    QEMU boots that ELF through its PVH entry (CONFIG_PVH=y), which skips the real-mode set-up and the
    decompressor: about a second less per boot under TCG on this host.
    """
    data = bzimage.read_bytes()
    decompressors = ((b"\x28\xb5\x2f\xfd", ["zstd", "-d", "-q", "-c"]), (b"\xfd7zXZ\x00", ["xz", "-d", "-q", "-c"]))
    for magic, command in decompressors:
        at = data.find(magic)
        while at >= 0:
            # Trailing data after the compressed frame makes the tools complain; the output is whole.
            proc = subprocess.run(command, input=data[at:], capture_output=True, check=False)
            if proc.stdout[:4] == b"\x7fELF":
                out.write_bytes(proc.stdout)
                return True
            at = data.find(magic, at + 1)
    return False


def _compiler() -> str:
    try:
        return subprocess.run(["gcc-12", "--version"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError as exc:
        raise LabBuildError(
            "gcc-12 (the compiler Debian built the 6.12 kernel with) is missing: run scripts/setup-lab.sh"
        ) from exc


def build(series: str = KERNEL_SERIES, *, force: bool = False) -> LabImage:
    """Builds the lab image (or returns the cached one with the same inputs)."""
    started = time.monotonic()
    if series not in RECIPES:
        raise LabBuildError(f"the lab has no recipe for kernel series {series} (known: {', '.join(RECIPES)})")
    recipe = RECIPES[series]
    pkgs, busybox_version = _resolve_cached(series, force=force)
    key = _inputs_hash(pkgs, busybox_version, _compiler())
    out = lab_cache() / key
    manifest = out / "manifest.json"
    if manifest.exists() and not force:
        with contextlib.suppress(TypeError, ValueError, KeyError):  # a manifest from an older builder: rebuild
            return LabImage.load(manifest)
    debs = lab_cache() / "debs"
    kernel = _unpack_kernel(pkgs, recipe, debs)
    bb_tree = lab_cache() / "busybox" / busybox_version
    if not (bb_tree / "bin/busybox").exists():
        bb_tree.mkdir(parents=True, exist_ok=True)
        _run(["dpkg", "-x", str(_download(debs, "busybox-static", busybox_version)), str(bb_tree)])
    busybox = bb_tree / "bin/busybox"

    lab_cache().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=lab_cache()))
    log = work / "build.log"
    try:
        headers = kernel / "x/usr/src" / f"linux-headers-{pkgs.release}"
        modroot = kernel / "x/lib/modules" / pkgs.release
        mtty = _build_mtty(recipe, kernel, headers, work, log)
        iovabm_vfio = _build_vfio(kernel, headers, work, log) if recipe.rebuild_vfio else None
        variants = VARIANTS if iovabm_vfio is not None else ("stock",)
        present = [rel for rel in OPTIONAL_KERNEL_MODULES if any(modroot.glob(rel + "*"))]
        stock = _module_closure(modroot, (*present, *KERNEL_MODULES))
        # mtty's dev_dbg lines trace the migration state machine in the guest's dmesg.
        lab = [(ko, "dyndbg=+p" if ko.name.startswith("mtty") else "") for ko in mtty]
        for variant in variants:
            mods = [(p, "") for p in stock]
            if variant == "iovabm" and iovabm_vfio is not None:
                mods = [((iovabm_vfio if p.name.startswith("vfio.ko") else p), "") for p in stock]
            _write_initramfs(work, busybox, [*mods, *lab], work / f"initramfs-{variant}.gz", log)
        shutil.copy(kernel / "x/boot" / f"vmlinuz-{pkgs.release}", work / "vmlinuz")
        for sub in ("mtty", "vfio-iovabm"):
            if not (work / sub).exists():
                continue
            for path in (work / sub).glob("*.ko"):
                (work / "modules").mkdir(exist_ok=True)
                shutil.copy(path, work / "modules" / ("vfio-iovabm.ko" if sub == "vfio-iovabm" else path.name))
            shutil.rmtree(work / sub)
        for root in work.glob("root-*"):
            shutil.rmtree(root)
        image = LabImage(
            directory=str(out),
            key=key,
            kernel_release=pkgs.release,
            kernel_package_version=pkgs.version,
            series=pkgs.series,
            vmlinuz=str(out / "vmlinuz"),
            vmlinux=str(out / "vmlinux") if _extract_vmlinux(work / "vmlinuz", work / "vmlinux") else None,
            initramfs={v: str(out / f"initramfs-{v}.gz") for v in variants},
            personalities=list(recipe.personalities),
            unavailable_note=recipe.note,
            busybox_version=busybox_version,
            build_seconds=round(time.monotonic() - started, 2),
        )
        (work / "manifest.json").write_text(json.dumps(asdict(image), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _prune(image)
    return image


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
    parser.add_argument("--series", default=KERNEL_SERIES, help=f"Debian kernel series (default {KERNEL_SERIES})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has this build")
    parser.add_argument("--resolve-only", action="store_true", help="print the kernel release that would be used")
    args = parser.parse_args(argv)
    try:
        if args.resolve_only:
            print(json.dumps(asdict(resolve_kernel(args.series)), indent=2))
            return 0
        started = time.monotonic()
        image = build(args.series, force=args.force)
    except LabBuildError as exc:
        print(f"vfio lab build failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(image), indent=2))
    print(f"ready in {time.monotonic() - started:.1f} s: {image.directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
