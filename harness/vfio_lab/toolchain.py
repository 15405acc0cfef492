"""Where a lab kernel's packages and compiler come from when bookworm alone does not have them.

Why: Debian's 7.x kernels are in trixie-backports and sid, which the machine's apt does not list, and their
headers want the compiler the kernel was built with (trixie's gcc-14, sid's gcc-16), which does not install on
bookworm; their kbuild tools (fixdep, modpost) also need trixie's glibc. So, per harness.vfio_lab.kernels row:

- a **private apt configuration** (``lab/apt/apt.conf``, ``APT_CONFIG``) with ``deb`` lines for the suites
  the private rows need, on the machine's own Debian mirror: ``apt-cache`` and ``apt-get download`` see those
  suites, the system's sources, lists and caches stay as they were;
- a **chroot of the row's suite** made by ``mmdebstrap`` with the compiler, make, libc6-dev, binutils and
  the kbuild tools' libraries (``lab/toolchain/<key>/root``, about 320 MB, built once, 20-60 s), in which
  ``make`` runs against a hard-linked copy of the unpacked headers.

A row without a toolchain builds with the host's compiler, exactly as before (:class:`Toolchain` with
``root=None``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.buildkit import InputDigest, Runner, Store
from harness.vfio_lab.kernels import LabKernel, private_suites

# Part of the chroot's key: change it whenever a change here alters the chroot it makes.
TOOLCHAIN_VERSION = "toolchain-1"
# What the chroot holds besides the compiler: make and the C library's headers for the modules, binutils for
# the linker, and the shared libraries of the kbuild package's host tools (its Depends, without pahole:
# the lab builds without module BTF, docs/vfio-lab.md P2).
CHROOT_PACKAGES = ("make", "libc6-dev", "binutils", "libelf1t64", "libssl3t64", "zlib1g")
SYSTEM_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
INSIDE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def debian_mirror() -> str | None:
    """The mirror the machine's own (non-security) Debian source names: the private configuration contacts
    nothing the machine does not already use. The same rule as scripts/lib.sh's debian_mirror."""
    files: list[Path] = []
    for source in SYSTEM_SOURCES:
        if source.is_dir():
            files.extend(sorted([*source.glob("*.sources"), *source.glob("*.list")]))
        elif source.is_file():
            files.append(source)
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            if "security" in line:
                continue
            if line.startswith("URIs:"):
                return line.split()[1]
            if line.startswith("deb "):
                found = re.search(r"[a-z]+://\S+", line)
                if found:
                    return found.group(0)
    return None


def private_apt(cache: Path, runner: Runner, *, refresh: bool = False) -> Path:
    """The lab's private apt configuration file, its package index fetched when missing (or ``refresh``).

    One configuration for every private row (their suites' index is about 65 MB, fetched in about 40 s).
    The index is fetched again only on ``refresh`` (``python -m harness.vfio_lab.build --refresh-apt``):
    a newer Debian release then becomes the lab's next build.
    """
    folder = cache / "apt"
    mirror = debian_mirror()
    if mirror is None:
        raise runner.error("no Debian mirror in /etc/apt/sources.list{,.d}: add the machine's Debian source first")
    for sub in ("sources.list.d", "lists/partial", "cache/archives/partial"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    sources = folder / "sources.list"
    want = "".join(f"deb {mirror} {suite} main\n" for suite in private_suites())
    if not sources.exists() or sources.read_text() != want:
        sources.write_text(want)
        refresh = True
    (folder / "status").touch()
    conf = folder / "apt.conf"
    conf.write_text(
        f'Dir::Etc::SourceList "{sources}";\nDir::Etc::SourceParts "{folder}/sources.list.d";\n'
        f'Dir::State::Lists "{folder}/lists";\nDir::State::status "{folder}/status";\n'
        f'Dir::Cache "{folder}/cache";\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
        'Acquire::Languages "none";\n'
    )
    if refresh or not any((folder / "lists").glob("*_Packages*")):
        for old in (folder / "lists").glob("*_Packages*"):
            old.unlink()
        env = {**os.environ, "APT_CONFIG": str(conf)}
        what = f"fetching the package index of {', '.join(private_suites())} (private, {folder})"
        runner.run(["apt-get", "update", "-qq"], what=what, env=env)
    return conf


@dataclass(frozen=True)
class Toolchain:
    """The compiler a row's modules are built with: the host's (``root`` None) or a chroot's."""

    compiler: str
    root: Path | None = None

    def describe(self, runner: Runner) -> str:
        """The compiler's version line: part of the lab's cache key."""
        argv = [self.compiler, "--version"]
        if self.root is not None:
            argv = ["chroot", str(self.root), "env", f"PATH={INSIDE_PATH}", *argv]
        what = f"checking {self.compiler} (the compiler Debian built the kernel with)"
        return runner.query(argv, what=what).splitlines()[0]

    def make_modules(self, runner: Runner, tree: Path, release: str, moddir: Path, log: Path) -> None:
        """``make modules`` of the out-of-tree folder ``moddir`` against the headers unpacked in ``tree``
        (the kernel's ``x/``); the .ko files end up in ``moddir`` either way."""
        # P2: Debian's config wants pahole for module BTF; the lab does not need BTF.
        args = ["CONFIG_DEBUG_INFO_BTF_MODULES=", "-j2", "modules"]
        if self.root is None:
            headers = tree / "usr/src" / f"linux-headers-{release}"
            runner.run(["make", "-C", str(headers), f"M={moddir}", *args], what=f"building {moddir.name}", log=log)
            return
        (self.root / "build").mkdir(exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix="lab-", dir=self.root / "build"))
        try:
            inside = Path("/") / stage.relative_to(self.root)
            _stage_headers(runner, tree, stage / "x", log)
            makefile = stage / "x/usr/src" / f"linux-headers-{release}" / "Makefile"
            text = makefile.read_text().replace(f"{tree}/usr/src/", f"{inside}/x/usr/src/")
            makefile.unlink()  # a hard link to the cached tree's file: replace it, never write through it
            makefile.write_text(text)
            shutil.copytree(moddir, stage / "m")
            argv = [*_in_chroot(self.root), "env", f"PATH={INSIDE_PATH}", "LC_ALL=C.UTF-8", "make"]
            headers = inside / "x/usr/src" / f"linux-headers-{release}"
            runner.run([*argv, "-C", str(headers), f"M={inside}/m", *args], what=f"building {moddir.name}", log=log)
            for built in (stage / "m").glob("*.ko"):
                shutil.copy(built, moddir / built.name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _in_chroot(root: Path) -> list[str]:
    """The argv prefix that runs a command in the chroot with /proc mounted (objtool reads /proc/self/limits
    and fails without it), in a private mount namespace: the mount ends with the command, even when it is
    killed, and never shows on the host."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root)]


def _stage_headers(runner: Runner, tree: Path, dest: Path, log: Path) -> None:
    """Headers and kbuild tools of ``tree`` into ``dest`` as hard links (instant, no space); a copy where the
    chroot is on another file system."""
    parts = [tree / "usr/src", *sorted((tree / "usr/lib").glob("linux-kbuild-*"))]
    for part in parts:
        target = dest / part.relative_to(tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            runner.run(["cp", "-al", str(part), str(target)], what=f"linking {part.name} into the chroot", log=log)
        except runner.error:
            shutil.rmtree(target, ignore_errors=True)
            runner.run(["cp", "-a", str(part), str(target)], what=f"copying {part.name} into the chroot", log=log)


def toolchain_for(kernel: LabKernel, cache: Path, runner: Runner) -> Toolchain:
    """The row's toolchain; its chroot is made on first use (under the lab's lock, which the caller holds)."""
    if kernel.toolchain is None:
        return Toolchain(kernel.compiler)
    packages = (kernel.compiler, *CHROOT_PACKAGES)
    mirror = debian_mirror() or ""
    key = (
        InputDigest()
        .text("recipe", TOOLCHAIN_VERSION)
        .text("suite", kernel.toolchain)
        .text("packages", ",".join(packages))
        .key()
    )
    store = Store(cache / "toolchain")
    found = store.find(key, "toolchain.json")
    if found is None:
        with store.publishing(key) as staging:
            argv = ["mmdebstrap", "--variant=essential", f"--include={','.join(packages)}", "--components=main"]
            # A mirror that is not updated daily serves sid's Release past its 7-day Valid-Until (seen: 27 days);
            # the signature is still checked, only the freshness limit is lifted.
            argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
            what = f"making a {kernel.toolchain} chroot with {kernel.compiler} (mmdebstrap)"
            log = staging / "mmdebstrap.log"
            runner.run([*argv, kernel.toolchain, str(staging / "root"), mirror], what=what, log=log)
            info = {"suite": kernel.toolchain, "packages": list(packages), "mirror": mirror}
            (staging / "toolchain.json").write_text(json.dumps(info) + "\n")
        found = store.path(key)
    return Toolchain(kernel.compiler, found / "root")
