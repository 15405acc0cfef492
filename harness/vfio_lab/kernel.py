"""The Debian kernel the VFIO lab runs: which release, its unpacked packages, and its modules' load order.

Why a release is chosen at build time and not pinned: Debian's security updates replace kernel packages, so a
fixed version would stop downloading; resolve_kernel() picks the newest release of the series that has every
package the lab needs, and the build records it. Nothing is installed on the host: the packages are fetched
with ``apt-get download`` (harness.buildkit.Apt) and unpacked with ``dpkg -x`` into the lab's cache.
"""

from __future__ import annotations

import lzma
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.buildkit import Apt, BuildError, Runner, Store, apt_state, remembered
from harness.vfio_lab.kernels import DEFAULT_SERIES, FLAVOUR, LabKernel, lab_kernel

# The default series (harness.vfio_lab.kernels holds the table of them). Which release of a series is used is
# decided at build time by resolve_kernel() (the newest one with every package we need), and recorded in results.
KERNEL_SERIES = DEFAULT_SERIES

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


class LabBuildError(BuildError):
    """A build step failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class KernelPackages:
    """One Debian kernel release and the package names that make it up."""

    series: str  # "6.12"
    abi: str  # "6.12.117+deb12"
    version: str  # Debian version, "6.12.117-1~deb12u1"
    kbuild: str  # package name of the kbuild tools (per ABI since 6.12, per series before)
    layout: str = "unsigned"  # harness.vfio_lab.kernels.LabKernel.layout

    @property
    def release(self) -> str:
        """``uname -r`` of the guest."""
        return f"{self.abi}-{FLAVOUR}"

    @property
    def image(self) -> str:
        """The package with the kernel itself."""
        if self.layout == "split":
            return f"linux-binary-{self.release}"
        return f"linux-image-{self.release}-unsigned"

    @property
    def binaries(self) -> list[str]:
        """Every package unpacked into the kernel's tree (all but the source)."""
        split = [f"linux-modules-{self.release}", f"linux-base-{self.release}"] if self.layout == "split" else []
        return [self.image, *split, self.headers, self.headers_common, self.kbuild]

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
        return [*self.binaries, self.source]

    def identity(self) -> dict[str, str]:
        """What the lab's cache key records of the release: the default layout is left out, so the keys of
        builds made before the layout existed stay valid (a rebuild of every cached lab is minutes of CI)."""
        fields = asdict(self)
        if fields["layout"] == "unsigned":
            del fields["layout"]
        return fields


def vmlinuz_path(tree: Path, release: str) -> Path:
    """The bzImage in an unpacked kernel tree: /boot (up to 6.12) or the modules folder (7.x's split layout)."""
    split = tree / "usr/lib/modules" / release / "vmlinuz"
    return split if split.exists() else tree / "boot" / f"vmlinuz-{release}"


def modules_path(tree: Path, release: str) -> Path:
    """The modules folder in an unpacked kernel tree: /lib/modules before the /usr merge, /usr/lib/modules after."""
    merged = tree / "usr/lib/modules" / release
    return merged if (merged / "kernel").is_dir() else tree / "lib/modules" / release


def runner() -> Runner:
    return Runner(LabBuildError, hint="run scripts/setup-lab.sh", tail_lines=15)


def _version_key(version: str) -> tuple[int, ...]:
    """Orders Debian kernel versions well enough for picking the newest: their numbers, in order."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def resolve_kernel(series: str | LabKernel = KERNEL_SERIES, apt: Apt | None = None) -> KernelPackages:
    """The newest release of the row ``series`` for which every package (kernel, modules where split, headers
    arch and common, kbuild, source) exists at one version.

    ``apt``: the machine's apt unless the caller passes the private one (harness.vfio_lab.toolchain) or a
    test a fake.
    """
    row = series if isinstance(series, LabKernel) else lab_kernel(series)
    series = row.series
    apt = apt or Apt(runner())
    if row.layout == "split":
        prefix, tail = "linux-binary", f"-{FLAVOUR}"
    else:
        prefix, tail = "linux-image", f"-{FLAVOUR}-unsigned"
    names = apt.names(f"{prefix}-{series}.")
    pattern = re.compile(rf"^{prefix}-({re.escape(series)}\.[^-]+(?:-\d+)?){re.escape(tail)}$")
    found = {m.group(1) for n in names if (m := pattern.match(n))}
    abis = sorted((a for a in found if a.endswith(row.abi_suffix)), key=_version_key, reverse=True)
    if not abis:
        raise LabBuildError(
            f"apt knows no {prefix}-{series}.*{row.abi_suffix}{tail} package: kernel {series} comes from "
            f"{', '.join(row.suites)}; add that source and run apt-get update"
            + (" (python -m harness.vfio_lab.build --refresh-apt)" if row.apt == "private" else "")
        )
    candidates = []
    for abi in abis:
        for kbuild in (f"linux-kbuild-{abi}", f"linux-kbuild-{series}"):
            candidates.append(KernelPackages(series, abi, "", kbuild, row.layout))
    versions = apt.versions(p for c in candidates for p in c.packages())
    for cand in candidates:
        common = set.intersection(*(set(versions[p]) for p in cand.packages()))
        if common:
            newest = max(common, key=_version_key)
            return KernelPackages(series, cand.abi, newest, cand.kbuild, row.layout)
    raise LabBuildError(
        f"no {series} kernel release has all of {prefix}-*{tail}, linux-headers "
        f"(arch and common), linux-kbuild and linux-source-{series} at one version in apt's lists"
    )


def resolve_cached(cache: Path, row: LabKernel, apt: Apt, *, force: bool = False) -> tuple[KernelPackages, str]:
    """resolve_kernel() and busybox's candidate, remembered until apt's lists change.

    The apt-cache calls cost seconds on a loaded host; their answers only change with apt-get update.
    ``apt``: where the kernel comes from (busybox always comes from the machine's apt).
    """
    record = cache / f"resolved-{row.series}.json"
    if force:
        record.unlink(missing_ok=True)

    def resolve() -> dict[str, object]:
        kernel = resolve_kernel(row, apt)
        return {"kernel": asdict(kernel), "busybox": Apt(runner()).candidate("busybox-static")}

    private = [private_state(apt.config)] if apt.config is not None else []
    saved = remembered(record, apt_state(row.series, FLAVOUR, "busybox-static", *private), resolve)
    return KernelPackages(**saved["kernel"]), str(saved["busybox"])


def private_state(conf: Path) -> str:
    """A key part that changes when the private index is fetched again (its lists folder's mtime)."""
    lists = conf.parent / "lists"
    return f"{lists}:{lists.stat().st_mtime_ns if lists.exists() else 0}"


def unpack_kernel(cache: Path, pkgs: KernelPackages, *, with_vfio: bool, apt: Apt | None = None) -> Path:
    """Unpacks image, headers, kbuild and the needed source files of one release (once per version) into
    ``<cache>/kernel/<version>/``; the .deb files are kept in ``<cache>/debs``."""
    kernels = Store(cache / "kernel")
    found = kernels.find(pkgs.version, ".complete")
    if found is not None:
        return found
    with kernels.publishing(pkgs.version) as tmp:
        _unpack_into(tmp, kernels.path(pkgs.version), pkgs, with_vfio, cache / "debs", apt or Apt(runner()))
    return kernels.path(pkgs.version)


def _unpack_into(tmp: Path, root: Path, pkgs: KernelPackages, with_vfio: bool, debs: Path, apt: Apt) -> None:
    tree = tmp / "x"
    for name in pkgs.binaries:
        package = apt.download(name, pkgs.version, debs)
        runner().run(["dpkg", "-x", str(package), str(tree)], what=f"unpacking {package.name}")
    # P1: the arch headers' Makefile names the common headers (and, since 7.x, its own folder as
    # KBUILD_OUTPUT) by their installed /usr/src paths.
    headers = tree / "usr/src" / f"linux-headers-{pkgs.release}"
    makefile = headers / "Makefile"
    makefile.write_text(re.sub(r"(?<![\w/.])/usr/src/", f"{root}/x/usr/src/", makefile.read_text()))
    # The source tarball is large; take only the files the lab compiles.
    src_deb = apt.download(pkgs.source, pkgs.version, debs)
    top = f"linux-source-{pkgs.series}"
    members = [f"{top}/{p}" for p in (*MTTY_SOURCES, *(VFIO_SOURCES if with_vfio else ()))]
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


def module_depends(path: Path) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo (module names, not files)."""
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    match = re.search(rb"\x00depends=([^\x00]*)\x00", data)
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def module_closure(modroot: Path, wanted: Sequence[str]) -> list[Path]:
    """``wanted`` (paths relative to modroot) plus their dependencies, each after what it needs.

    Read from each module's own modinfo: the package ships no modules.dep (the installer's depmod
    writes it) and the host need not have kmod.
    """
    index = {p.name.split(".ko")[0].replace("-", "_"): p for p in (modroot / "kernel").rglob("*.ko*")}
    order: list[Path] = []

    def visit(path: Path) -> None:
        if path in order:
            return
        for dep in module_depends(path):
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
