"""What to build: the SPEC a person types, the Debian source it names, the configure line and the cache key.

Pure logic (no apt, no files), so it is unit-tested on its own: :mod:`harness.qemu_build.recipe` asks apt
and hands the answers here.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.buildkit import BuildError, InputDigest
from harness.errors import UsageError

# The suites whose deb-src lines scripts/setup-qemu-build.sh writes: every QEMU Debian has carried since
# 10.0 (bookworm-backports) up to the newest (sid). Earlier entries win a tie (same version in two suites).
SUITES = ("bookworm-backports", "trixie", "trixie-backports", "forky", "sid")
# Bumped whenever a change to the recipe alters what it builds (the preparation of the tree, the install
# layout), so older entries are rebuilt rather than reused.
RECIPE_VERSION = "1"
# Debian's firmware folders (packages seabios, ipxe-qemu, qemu-system-data), compiled in as the firmware path
# so a built binary finds SeaBIOS, iPXE and the option ROMs without -L; harness.binaries adds -L for them too.
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
FIRMWARE_PATH = ":".join(FIRMWARE_DIRS)
CCACHE_CC = "--cc=ccache cc"
_FEATURES = (
    *("vvfat", "qcow1", "bochs", "cloop", "dmg", "vdi", "vhdx", "vmdk", "vpc", "qed", "parallels"),
    *("replication", "colo-proxy", "spice-protocol", "gio"),
    *("vhost-user", "vhost-kernel", "vhost-net", "vhost-vdpa", "vhost-crypto", "tpm", "multiprocess", "keyring"),
)
# The configure line of every QEMU migconform builds (the mutants and `migconform qemu build`).
# --without-default-features turns off every feature not named here: GUIs (gtk, sdl, vnc, opengl), the spice
# server, RDMA, audio, the docs. userfaultfd (postcopy) and VFIO need no option: they come with Linux's headers
# and the default devices. --disable-install-blobs: Debian's +ds tarballs carry no firmware to install.
CONFIGURE_ARGS = (
    "--target-list=x86_64-softmmu",
    "--disable-docs",
    "--without-default-features",
    "--enable-kvm",
    "--enable-tcg",
    "--enable-pixman",
    "--enable-fdt=system",
    "--disable-install-blobs",
    f"--firmwarepath={FIRMWARE_PATH}",
    CCACHE_CC,
    # Features Debian's binary has and the bundled suite uses (without them a built binary refuses at
    # startup where Debian's QEMU reaches the migration check): vvfat and qcow1 (vvfat's rw overlay),
    # the other built-in image formats, COLO/replication, the qemu-vdagent chardev (spice-protocol
    # headers, not the spice server), gio (dbus-vmstate), vhost, TPM, multiprocess and the keyring secret.
    *(f"--enable-{feature}" for feature in _FEATURES),
)
# What python/wheels held in the QEMU 10.0 tree Debian strips (its pythondeps.toml pins these): the fallback
# when a tree has no pythondeps.toml to read.
DEFAULT_WHEELS = ("meson==1.5.0", "pycotap==1.3.1")

_UPSTREAM = re.compile(r"^\d+\.\d+(?:\.\d+)?$")


def upstream_version(debian_version: str) -> str:
    """1:10.0.2+ds-2+deb13u1~bpo12+1 -> 10.0.2 (what `qemu-system-x86_64 --version` reports)."""
    m = re.match(r"(?:\d+:)?(\d+\.\d+\.\d+)", debian_version)
    if not m:
        raise BuildError(f"cannot read an upstream version from {debian_version!r}")
    return m.group(1)


@dataclass(frozen=True)
class Spec:
    """A SPEC: ``upstream`` (10.2 or 10.2.2: the newest Debian source of that release) or ``debian`` (an exact
    Debian version, with or without its epoch: 1:10.2.2+ds-1, 10.2.2+ds-1)."""

    text: str
    upstream: str | None = None
    debian: str | None = None

    def matches(self, debian_version: str) -> bool:
        if self.debian is not None:
            return _strip_epoch(debian_version) == _strip_epoch(self.debian)
        assert self.upstream is not None
        m = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", debian_version)
        have = m.group(1) if m else ""
        return have == self.upstream or have.startswith(self.upstream + ".")


def parse_spec(text: str) -> Spec:
    text = text.strip()
    if _UPSTREAM.match(text):
        return Spec(text, upstream=text)
    if re.match(r"^(\d+:)?\d+\.\d+\.\d+[0-9A-Za-z.+~-]*$", text) and re.search(r"[+~:-]", text):
        return Spec(text, debian=text)
    raise UsageError(
        f"{text!r} is not a QEMU version: give a release (10.2, 10.2.2) or a Debian version (1:10.2.2+ds-1), "
        "or --source DIR|TARBALL"
    )


def _strip_epoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version.split("-", 1)[0] else version


@dataclass(frozen=True)
class SourceOffer:
    """One Debian source version of qemu and the suite that carries it (a line of apt-cache madison)."""

    version: str
    suite: str


def parse_madison(text: str) -> list[SourceOffer]:
    """The source offers in apt-cache madison's output (lines ``qemu | VERSION | MIRROR SUITE/main Sources``)."""
    offers = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 3 or not fields[2].endswith("Sources"):
            continue
        words = fields[2].split()
        suite = words[-2].split("/")[0] if len(words) >= 2 else ""
        offers.append(SourceOffer(fields[1], suite))
    return offers


def choose(spec: Spec, offers: Sequence[SourceOffer]) -> SourceOffer:
    """The newest offer ``spec`` matches (Debian's version order); the first suite of :data:`SUITES` on a tie."""
    return ranked(spec, offers)[0]


def ranked(spec: Spec, offers: Sequence[SourceOffer]) -> list[SourceOffer]:
    """Every offer ``spec`` matches, the one :func:`choose` picks first, then the others in the same order (the
    fallbacks when the mirror no longer holds the first one's files)."""
    matching = [o for o in offers if spec.matches(o.version)]
    if not matching:
        have = ", ".join(f"{o.version} ({o.suite})" for o in offers) or "none"
        raise BuildError(
            f"no Debian source of qemu matches {spec.text}; apt offers: {have} "
            "(scripts/setup-qemu-build.sh --refresh fetches the source index again)"
        )
    rank = {suite: i for i, suite in enumerate(SUITES)}
    left = list(matching)
    order: list[SourceOffer] = []
    while left:
        best = left[0]
        for offer in left[1:]:
            newer = compare_versions(offer.version, best.version)
            if newer > 0 or (newer == 0 and rank.get(offer.suite, 99) < rank.get(best.suite, 99)):
                best = offer
        order.append(best)
        left.remove(best)
    return order


def _char_order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternating non-digit runs (``~`` before everything, letters before the rest) and
    numbers."""
    while a or b:
        na = re.match(r"\D*", a).group(0)  # type: ignore[union-attr]
        nb = re.match(r"\D*", b).group(0)  # type: ignore[union-attr]
        for i in range(max(len(na), len(nb))):
            ca = _char_order(na[i]) if i < len(na) else 0
            cb = _char_order(nb[i]) if i < len(nb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        a, b = a[len(na) :], b[len(nb) :]
        da = re.match(r"\d*", a).group(0)  # type: ignore[union-attr]
        db = re.match(r"\d*", b).group(0)  # type: ignore[union-attr]
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
        a, b = a[len(da) :], b[len(db) :]
    return 0


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version ``a`` sorts before, with or after ``b`` (dpkg --compare-versions)."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def configure_args(*, ccache: bool) -> tuple[str, ...]:
    """:data:`CONFIGURE_ARGS`, compiling with plain ``cc`` when ccache is not installed."""
    return CONFIGURE_ARGS if ccache else tuple("--cc=cc" if a == CCACHE_CC else a for a in CONFIGURE_ARGS)


def cache_key(source_digest: str, args: Iterable[str]) -> str:
    """The Store key of a build: the source's content, the configure line (the compiler wrapper left out: ccache
    does not change what is built) and :data:`RECIPE_VERSION`."""
    line = [a for a in args if not a.startswith("--cc=")]
    digest = InputDigest().text("recipe", RECIPE_VERSION).text("source", source_digest)
    return digest.text("configure", json.dumps(line)).key()


def python_wheels(pythondeps: str | None) -> tuple[str, ...]:
    """The ``name==version`` wheels configure installs offline (pythondeps.toml's ``[meson]`` group, its
    ``installed`` pins): Debian's tarball strips python/wheels, so the recipe downloads exactly these."""
    if pythondeps is None:
        return DEFAULT_WHEELS
    group = tomllib.loads(pythondeps).get("meson", {})
    pins = [f"{name}=={info['installed']}" for name, info in group.items() if "installed" in info]
    return tuple(sorted(pins)) or DEFAULT_WHEELS


def turn_off_edk2(meson_build: str) -> str:
    """meson.build with every ``unpack_edk2_blobs = ...`` set to false: the +ds tarball has no
    pc-bios/edk2-*.fd.bz2 and meson fails looking for them (10.0 sets it false, then to bzip2.found() when an
    edk2 target is built)."""
    fixed, n = re.subn(r"^(\s*)unpack_edk2_blobs = .*$", r"\1unpack_edk2_blobs = false", meson_build, flags=re.M)
    if n == 0:
        raise BuildError("meson.build: no 'unpack_edk2_blobs = ...' line to turn off (new QEMU layout?)")
    return fixed
