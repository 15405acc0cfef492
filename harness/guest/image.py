"""Builds the guest image (kernel + initramfs) from Debian packages and caches it by the hash of its inputs.

Why Debian packages and not a kernel of our own: every developer machine and CI run of this project can reach
Debian's archive and nothing else, and a packaged kernel boots under both QEMU versions without a toolchain for
kernels. Nothing is installed on the host: ``apt-get download`` fetches the .deb files and ``dpkg -x`` unpacks
them into the cache. The initramfs is written here in Python (cpio "newc"), so it is byte-for-byte reproducible
and can carry device nodes without root.

The cache key is a SHA-256 over everything that goes into the image: the two .deb files, the workload source,
the init script, the compiler's version and this recipe's version (RECIPE_VERSION). A changed input gives a new
folder ``<cache>/guest/<hash>/``; an unchanged one is reused. The cache, apt and command plumbing is the build
kit's (harness.buildkit). ``python -m harness.guest.image`` builds and prints the paths. Standard library
only: scripts/setup-guest.sh runs it before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.buildkit import Apt, BuildError, InputDigest, Runner, Store, apt_state, extract_vmlinux, remembered
from harness.settings import cache_root

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = REPO_ROOT / "images" / "guest"

# The one place the guest kernel is chosen: the newest version of this Debian metapackage whose version starts
# with KERNEL_SERIES. "cloud" is Debian's kernel for virtual machines: fewer drivers, so it boots faster under TCG,
# and it has the 8250 serial console, devtmpfs and the initramfs decompressors built in (no modules needed).
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
KERNEL_SERIES = "6.1."
BUSYBOX_PACKAGE = "busybox-static"

# Kernel command line. quiet: printing to a TCG-emulated UART costs about a second. mitigations=off,
# tsc=reliable, no_timer_check and a preset lpj skip work that is slow under TCG and pointless in a test guest.
# cryptomgr.notests skips the crypto self-tests (~0.3 s of TCG time).
KERNEL_CMDLINE = (
    "console=ttyS0 quiet mitigations=off tsc=reliable no_timer_check lpj=10000000 cryptomgr.notests panic=-1"
)

# The prompt that the init script sets; the console waits for it.
PROMPT = "mc-guest# "

WORKLOAD_CFLAGS = ("-O2", "-static", "-s", "-Wall", "-Wextra", "-Werror")

# Part of the cache key: change it (to any new text) whenever a change here alters the image it builds. Its
# value is the SHA-256 this file had when the key included the file itself, so images built then are reused.
RECIPE_VERSION = "f3d6fe41260f240c052cf0bc7b4e7e8d3b5aff7e4045581c3d7ef65747db0305"


class GuestImageError(BuildError):
    """The image cannot be built; the message says which step failed and what to do about it."""


@dataclass(frozen=True)
class GuestImage:
    """A built image: pass ``kernel``/``initrd``/``cmdline`` to QEMU's -kernel/-initrd/-append."""

    kernel: Path
    initrd: Path
    cmdline: str
    digest: str
    kernel_package: str
    busybox_version: str


@dataclass(frozen=True)
class _Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def _runner() -> Runner:
    return Runner(GuestImageError, hint="run scripts/setup-guest.sh as root", tail_lines=1)


def _madison_versions(package: str) -> list[str]:
    """Versions the apt sources offer, newest first (apt-cache madison's order)."""
    return Apt(_runner()).versions([package])[package]


def resolve_kernel() -> _Package:
    """The versioned kernel package that the newest KERNEL_SERIES version of the metapackage depends on."""
    versions = [v for v in _madison_versions(KERNEL_METAPACKAGE) if v.startswith(KERNEL_SERIES)]
    if not versions:
        raise GuestImageError(
            f"no {KERNEL_METAPACKAGE} {KERNEL_SERIES}x in the apt sources (run `apt-get update`; bookworm needed)"
        )
    meta_version = versions[0]
    for name in Apt(_runner()).depends(f"{KERNEL_METAPACKAGE}={meta_version}"):
        if name.startswith("linux-image-"):
            image_versions = _madison_versions(name)
            if not image_versions:
                raise GuestImageError(f"{name} is not in the apt sources (run `apt-get update`)")
            return _Package(name, image_versions[0])
    raise GuestImageError(f"{KERNEL_METAPACKAGE}={meta_version} depends on no linux-image package")


def resolve_busybox() -> _Package:
    versions = _madison_versions(BUSYBOX_PACKAGE)
    if not versions:
        raise GuestImageError(f"no {BUSYBOX_PACKAGE} in the apt sources (run `apt-get update`)")
    return _Package(BUSYBOX_PACKAGE, versions[0])


def resolve_packages(guest_cache: Path) -> tuple[_Package, _Package]:
    """(kernel, busybox) to use. apt-cache takes seconds on a loaded machine, so the answer is remembered until
    apt's lists or sources change."""

    def resolve() -> dict[str, list[str]]:
        kernel, busybox = resolve_kernel(), resolve_busybox()
        return {"kernel": [kernel.name, kernel.version], "busybox": [busybox.name, busybox.version]}

    key = apt_state(KERNEL_METAPACKAGE, KERNEL_SERIES, BUSYBOX_PACKAGE)
    saved = remembered(guest_cache / "resolved.json", key, resolve)
    return _Package(*saved["kernel"]), _Package(*saved["busybox"])


def _download(package: _Package, debs: Path) -> Path:
    return Apt(_runner()).download(package.name, package.version, debs)


def _compiler_version() -> str:
    return _runner().query(["gcc", "--version"], what="checking the C compiler").splitlines()[0]


def input_digest(kernel_deb: Path, busybox_deb: Path) -> str:
    """The cache key: changes whenever anything that ends up in (or decides) the image changes."""
    digest = (
        InputDigest()
        .file("kernel-deb", kernel_deb)
        .file("busybox-deb", busybox_deb)
        .text("compiler", _compiler_version())
        .text("cflags", " ".join(WORKLOAD_CFLAGS))
        .text("builder", RECIPE_VERSION)
    )
    for path in sorted(SOURCES.iterdir()):
        if path.is_file():
            digest.file(f"source:{path.name}", path)
    return digest.key()


class _Cpio:
    """A minimal writer of the "newc" cpio format that the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self._ino += 1
        self._out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + namez)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def _extract_pvh_kernel(bzimage: Path, config: Path, out: Path) -> bool:
    """Write the ELF vmlinux inside ``bzimage`` to ``out`` if the kernel can boot through PVH; else False
    (the caller then boots the bzImage itself, which always works, only slower)."""
    if "CONFIG_PVH=y" not in config.read_text(errors="replace").splitlines():
        return False
    return extract_vmlinux(bzimage, out)


def _busybox_applets(busybox: Path) -> list[str]:
    out = _runner().query([str(busybox), "--list-full"], what="listing busybox applets")
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def _build_initrd(busybox: Path, memload: Path, init_script: Path) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "root"):
        cpio.directory(d)
    # The kernel opens /dev/console for init's stdio before anything can mount devtmpfs.
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/ttyS0", 4, 64)
    cpio.char_device("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox.read_bytes())
    for applet in _busybox_applets(busybox):
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")
    cpio.file("bin/memload", memload.read_bytes())
    cpio.file("init", init_script.read_bytes())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _load(folder: Path) -> GuestImage:
    manifest = json.loads((folder / "manifest.json").read_text())
    return GuestImage(
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd.gz",
        cmdline=KERNEL_CMDLINE,
        digest=manifest["digest"],
        kernel_package=manifest["kernel_package"],
        busybox_version=manifest["busybox_version"],
    )


def build_image() -> GuestImage:
    """The image for the current inputs: reused from the cache, else downloaded, unpacked and built."""
    store = Store(cache_root() / "guest")
    runner = _runner()
    with store.locked():
        kernel_pkg, busybox_pkg = resolve_packages(store.root)
        kernel_deb = _download(kernel_pkg, store.root / "debs")
        busybox_deb = _download(busybox_pkg, store.root / "debs")
        digest = input_digest(kernel_deb, busybox_deb)
        found = store.find(digest)
        if found is not None:
            return _load(found)
        with store.publishing(digest) as out, tempfile.TemporaryDirectory(dir=store.root, prefix=".build-") as t:
            tmp = Path(t)
            for deb in (kernel_deb, busybox_deb):
                runner.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], what=f"unpacking {deb.name}")
            kernels = sorted((tmp / "root" / "boot").glob("vmlinuz-*"))
            configs = sorted((tmp / "root" / "boot").glob("config-*"))
            if len(kernels) != 1 or len(configs) != 1:
                raise GuestImageError(f"{kernel_deb.name} holds {len(kernels)} kernels, expected 1")
            busybox = tmp / "root" / "bin" / "busybox"
            memload = tmp / "memload"
            runner.run(
                ["gcc", *WORKLOAD_CFLAGS, "-o", str(memload), str(SOURCES / "memload.c")],
                what="compiling the workload (needs gcc and libc6-dev: scripts/setup-guest.sh)",
            )
            pvh = _extract_pvh_kernel(kernels[0], configs[0], out / "vmlinuz")
            if not pvh:
                shutil.copyfile(kernels[0], out / "vmlinuz")
            (out / "initrd.gz").write_bytes(_build_initrd(busybox, memload, SOURCES / "init"))
            manifest = {
                "digest": digest,
                "kernel_package": kernel_pkg.spec,
                "busybox_version": busybox_pkg.version,
                "kernel_file": kernels[0].name,
                "kernel_boot": "pvh-elf" if pvh else "bzimage",
            }
            (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return _load(store.path(digest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.guest.image", description="Build (or reuse) the migconform guest image."
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        image = build_image()
    except GuestImageError as exc:
        print(f"guest image: {exc}", file=sys.stderr)
        return 1
    if args.json:
        fields = {k: str(v) for k, v in image.__dict__.items()}
        print(json.dumps(fields, indent=2))
    else:
        print(f"kernel  {image.kernel}\ninitrd  {image.initrd}\nappend  {image.cmdline}")
        print(f"digest  {image.digest} ({image.kernel_package}, busybox {image.busybox_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
