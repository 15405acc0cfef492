"""The VFIO lab's kernels: one table of every Debian kernel series the lab can boot, and how each is built.

Why a table: each series differs in data only (which Debian suite carries it, how its packages are split,
which compiler its headers want, which mdev samples it has), so adding a series is adding a row, and every
consumer (the builder, the provider's ``series`` option, ``migconform run --lab-kernel``, the tests, a CI
planner) reads the same rows. The default row is the lab every plain ``--vfio-provider mtty`` run uses and
the one scripts/setup-lab.sh prepares; the others are built on first use and cached (docs/vfio-lab.md,
"Kernel matrix").

For a CI planner: :func:`available_lab_kernels` lists every row with whether its lab is already built here
and what a cold build needs; it reads only files in the cache (no apt, no network).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contract.scenario import PERSONALITIES
from harness import settings

FLAVOUR = "amd64"
ALL_PERSONALITIES = PERSONALITIES  # every personality a scenario may ask for


@dataclass(frozen=True)
class Recipe:
    """What the lab builds for one kernel series."""

    kbuild_dir: str  # folder under images/lab with the Kbuild of the mdev samples
    personality_patch: str | None  # patch applied to mtty.c (None: build the samples as shipped)
    rebuild_vfio: bool  # also build vfio.ko with iova_bitmap (the "iovabm" initramfs variant)
    personalities: tuple[str, ...]  # what harness.vfio_lab.mdev may hand out on this kernel
    note: str = ""


# mtty with migration (Linux 6.7+): every personality, both initramfs variants.
MIGRATION_RECIPE = Recipe("mtty", "mtty/personality.patch", True, ALL_PERSONALITIES)


@dataclass(frozen=True)
class LabKernel:
    """One row: a Debian kernel series and everything that differs in building its lab.

    ``apt``: ``"system"`` resolves and downloads with the machine's apt (bookworm and its security and
    backports suites, which scripts/setup.sh configures); ``"private"`` with the lab's own apt configuration
    (harness.vfio_lab.toolchain), which adds ``suites`` without touching the system's apt.
    ``layout``: ``"unsigned"`` is one ``linux-image-REL-unsigned`` package with kernel and modules (Debian
    up to 6.12); ``"split"`` is ``linux-binary-REL`` (the kernel), ``linux-modules-REL`` and ``linux-base-REL``
    (Debian's packaging of 7.x).
    ``toolchain``: None builds with the host's ``compiler`` (bookworm's gcc-12); a suite name builds in a
    chroot of that suite with its ``compiler`` (a newer gcc does not install on bookworm).
    ``abi_suffix``: keeps only releases whose ABI ends so, where two suites carry the same series.
    """

    series: str
    suites: tuple[str, ...]
    compiler: str
    recipe: Recipe
    apt: Literal["system", "private"] = "system"
    layout: Literal["unsigned", "split"] = "unsigned"
    toolchain: str | None = None
    abi_suffix: str = ""
    default: bool = False
    note: str = ""

    @property
    def cheap(self) -> bool:
        """Built from the machine's apt with the host's compiler: no private apt index, no chroot. Tests build
        such a lab on first use; the others only run where their lab is already built."""
        return self.apt == "system" and self.toolchain is None


LAB_KERNELS: tuple[LabKernel, ...] = (
    LabKernel(
        "6.12",
        ("bookworm-security", "bookworm-backports"),
        "gcc-12",
        MIGRATION_RECIPE,
        default=True,
        note="Debian 12's newer kernel; the lab's default",
    ),
    LabKernel(
        "6.1",
        ("bookworm", "bookworm-security"),
        "gcc-12",
        Recipe(
            "mtty-plain",
            None,
            False,
            ("no-migration",),
            note="the 6.1 kernel's mtty has no migration support (mtty.c gained it in 6.7)",
        ),
        note="Debian 12's own kernel: mtty without migration",
    ),
    LabKernel(
        "7.3",
        ("trixie-backports",),
        "gcc-14",
        MIGRATION_RECIPE,
        apt="private",
        layout="split",
        toolchain="trixie",
        abi_suffix="+deb13",
        note="Debian 13 backports; headers built with trixie's gcc-14",
    ),
    LabKernel(
        "7.2",
        ("sid",),
        "gcc-16",
        MIGRATION_RECIPE,
        apt="private",
        layout="split",
        toolchain="sid",
        abi_suffix="+deb14",
        note="Debian unstable (forky's kernel); headers built with sid's gcc-16",
    ),
)


def lab_kernels() -> tuple[LabKernel, ...]:
    """Every row, the default first."""
    return tuple(sorted(LAB_KERNELS, key=lambda k: not k.default))


def default_kernel() -> LabKernel:
    return next(k for k in LAB_KERNELS if k.default)


DEFAULT_SERIES = default_kernel().series


def lab_kernel(series: str | None = None) -> LabKernel:
    """The row of ``series`` (None or "default": the default row); ValueError naming the known ones."""
    if series in (None, "", "default"):
        return default_kernel()
    for kernel in LAB_KERNELS:
        if kernel.series == series:
            return kernel
    known = ", ".join(k.series for k in lab_kernels())
    raise ValueError(f"the VFIO lab has no kernel series {series!r} (known: {known})")


def private_suites() -> tuple[str, ...]:
    """Every suite a row needs from the lab's private apt configuration, in table order."""
    seen: list[str] = []
    for kernel in LAB_KERNELS:
        if kernel.apt == "private":
            seen.extend(s for s in kernel.suites if s not in seen)
    return tuple(seen)


def lab_cache() -> Path:
    """The lab's folder in the set-up script's cache (harness.settings.cache_root)."""
    return settings.cache_root() / "lab"


def built_image(series: str, cache: Path) -> dict[str, Any] | None:
    """The manifest of the newest finished lab build of ``series`` in ``cache`` (the lab folder), or None.

    Reads manifests only: says what is built without resolving anything (a newer Debian release may exist;
    the next build would pick it up).
    """
    best: tuple[float, dict[str, Any]] | None = None
    for manifest in cache.glob("*/manifest.json"):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("series") == series:
            stamp = manifest.stat().st_mtime
            if best is None or stamp > best[0]:
                best = (stamp, data)
    return None if best is None else best[1]


def available_lab_kernels(cache: Path | None = None) -> list[dict[str, Any]]:
    """Every lab kernel as JSON-ready rows, default first: ``series``, ``default``, ``built`` (a finished lab
    is in the cache), ``release`` (its ``uname -r`` when built), ``suites``, ``compiler``, ``toolchain``,
    ``cheap`` (buildable with the host's tools alone), ``personalities``, ``note``.

    ``cache``: the lab folder (default :func:`lab_cache`). What a CI planner calls to
    decide which kernels get a job: a job for a kernel whose lab is not built pays its cold build.
    """
    if cache is None:
        cache = lab_cache()
    rows = []
    for kernel in lab_kernels():
        image = built_image(kernel.series, cache)
        rows.append(
            {
                "series": kernel.series,
                "default": kernel.default,
                "built": image is not None,
                "release": None if image is None else image.get("kernel_release"),
                "suites": list(kernel.suites),
                "compiler": kernel.compiler,
                "toolchain": kernel.toolchain,
                "cheap": kernel.cheap,
                "personalities": list(kernel.recipe.personalities),
                "note": kernel.note,
            }
        )
    return rows
