"""`migconform qemu build`'s pure logic: SPEC parsing, the suite and version chosen, Debian's version order,
the configure line, the cache key, the wheels read from pythondeps.toml, the edk2 switch, ninja's progress,
and how a built QEMU is found and run (``-L`` for the firmware its tree lacks, ``--qemu 10.2``).

Why these matter: a wrong choice builds another QEMU than the one asked for, a key that ignores an input
reuses a wrong binary (one that follows ccache's presence rebuilds for nothing: an hour), and a built binary
without ``-L`` dies with "could not load PC BIOS 'bios-256k.bin'". The preparation steps run for real on a
tiny tarball (unpack, wheels, edk2): no QEMU is built here.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from contract.versions import Version
from harness.binaries import QemuBinary, _layout_for, built_layout, is_version_request, select_version
from harness.buildkit import BuildError, Runner
from harness.errors import UsageError
from harness.qemu_build.found import BINARY_REL, MANIFEST, built_qemus
from harness.qemu_build.recipe import QemuRecipe, missing_from_mirror, ninja_progress, tree_folder
from harness.qemu_build.spec import (
    CONFIGURE_ARGS,
    DEFAULT_WHEELS,
    FIRMWARE_DIRS,
    SourceOffer,
    cache_key,
    choose,
    compare_versions,
    configure_args,
    parse_madison,
    parse_spec,
    python_wheels,
    ranked,
    turn_off_edk2,
    upstream_version,
)
from harness.qemu_build.tree import make_buildable, unpack

MADISON = """\
      qemu | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main Sources
      qemu | 1:10.0.13+ds-0+deb13u1 | http://deb.debian.org/debian trixie/main Sources
      qemu | 1:11.1.3+ds-2~bpo13+1 | http://deb.debian.org/debian trixie-backports/main Sources
      qemu | 1:11.1.2+ds-3 | http://deb.debian.org/debian forky/main Sources
      qemu | 1:10.2.2+ds-1 | http://deb.debian.org/debian sid/main Sources
      qemu | 1:11.1.2+ds-3 | http://deb.debian.org/debian sid/main Sources
      qemu | 1:11.1.3+ds-1 | http://deb.debian.org/debian sid/main Sources
qemu-system-x86 | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
"""
PYTHONDEPS_10_2 = """
[meson]
# The install key should match the version in python/wheels/
meson = { accepted = ">=1.5.0", installed = "1.9.0", canary = "meson" }
pycotap = { accepted = ">=1.1.0", installed = "1.3.1" }

[meson-rust]
meson = { accepted = ">=1.9.0", installed = "1.9.0", canary = "meson" }

[docs]
sphinx = { accepted = ">=3.4.3", installed = "6.2.1", canary = "sphinx-build" }
"""


@pytest.mark.parametrize(
    ("text", "upstream", "debian"),
    [
        ("10.2", "10.2", None),
        ("10.2.2", "10.2.2", None),
        ("11.1", "11.1", None),
        ("1:10.2.2+ds-1", None, "1:10.2.2+ds-1"),
        ("10.2.2+ds-1", None, "10.2.2+ds-1"),
        (" 10.2 ", "10.2", None),
    ],
)
def test_spec_parsing(text: str, upstream: str | None, debian: str | None) -> None:
    spec = parse_spec(text)
    assert (spec.upstream, spec.debian) == (upstream, debian)


@pytest.mark.parametrize("text", ["", "10", "ten", "10.2.x", "latest", "/usr/bin/qemu"])
def test_spec_parsing_refuses_what_is_no_version(text: str) -> None:
    with pytest.raises(UsageError, match="not a QEMU version"):
        parse_spec(text)


def test_madison_lines_of_sources_only() -> None:
    offers = parse_madison(MADISON)
    assert len(offers) == 7
    assert offers[0] == SourceOffer("1:10.0.2+ds-2+deb13u1~bpo12+1", "bookworm-backports")
    assert SourceOffer("1:10.2.2+ds-1", "sid") in offers


@pytest.mark.parametrize(
    ("spec", "version", "suite"),
    [
        ("10.2", "1:10.2.2+ds-1", "sid"),
        ("10.2.2", "1:10.2.2+ds-1", "sid"),
        ("10.0", "1:10.0.13+ds-0+deb13u1", "trixie"),  # 10.0.13 > 10.0.2: numbers, not text
        ("10.0.2", "1:10.0.2+ds-2+deb13u1~bpo12+1", "bookworm-backports"),
        ("11.1.2", "1:11.1.2+ds-3", "forky"),  # in forky and sid: the earlier suite of SUITES
        ("11.1.3", "1:11.1.3+ds-2~bpo13+1", "trixie-backports"),  # -2~bpo13+1 sorts after -1
        ("11.1", "1:11.1.3+ds-2~bpo13+1", "trixie-backports"),
        ("11.1.3+ds-1", "1:11.1.3+ds-1", "sid"),
        ("1:10.2.2+ds-1", "1:10.2.2+ds-1", "sid"),
    ],
)
def test_choice_of_version_and_suite(spec: str, version: str, suite: str) -> None:
    assert choose(parse_spec(spec), parse_madison(MADISON)) == SourceOffer(version, suite)


def test_choice_names_the_offers_when_none_matches() -> None:
    with pytest.raises(BuildError, match=r"no Debian source of qemu matches 9\.2; apt offers: 1:10\.0\.2"):
        choose(parse_spec("9.2"), parse_madison(MADISON))
    with pytest.raises(BuildError, match="apt offers: none"):
        choose(parse_spec("10.1"), [])


def test_release_prefix_is_a_whole_component() -> None:
    assert not parse_spec("10.2").matches("1:10.20.1+ds-1")
    assert parse_spec("10.2").matches("1:10.2.0+ds-1")


PAIRS = [
    ("1:10.0.2+ds-2", "1:10.0.13+ds-0"),
    ("1:11.1.3+ds-1", "1:11.1.3+ds-2~bpo13+1"),
    ("1.0~rc1", "1.0"),
    ("1.0", "1.0+b1"),
    ("1:1.0", "2.0"),
    ("2.0a", "2.0+"),
    ("1.0-1", "1.0-1"),
]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_debian_version_order_agrees_with_dpkg(a: str, b: str) -> None:
    """Checked against the real dpkg, the authority, when it is installed."""
    ours = compare_versions(a, b)
    assert compare_versions(b, a) == -ours
    try:
        lower = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0
        equal = subprocess.run(["dpkg", "--compare-versions", a, "eq", b], check=False).returncode == 0
    except FileNotFoundError:
        pytest.skip("dpkg is not installed")
    assert ours == (0 if equal else -1 if lower else 1)


def test_upstream_version() -> None:
    assert upstream_version("1:10.0.2+ds-2+deb13u1~bpo12+1") == "10.0.2"
    with pytest.raises(BuildError):
        upstream_version("unknown")


def test_configure_line() -> None:
    assert "--target-list=x86_64-softmmu" in CONFIGURE_ARGS
    assert {"--disable-docs", "--without-default-features", "--enable-kvm", "--enable-tcg"} <= set(CONFIGURE_ARGS)
    assert "--cc=ccache cc" in configure_args(ccache=True)
    plain = configure_args(ccache=False)
    assert "--cc=cc" in plain and "--cc=ccache cc" not in plain
    assert len(plain) == len(CONFIGURE_ARGS)


def test_cache_key_follows_source_and_configure_not_the_compiler_wrapper() -> None:
    key = cache_key("a" * 64, configure_args(ccache=True))
    assert key == cache_key("a" * 64, configure_args(ccache=False))
    assert key != cache_key("b" * 64, configure_args(ccache=True))
    assert key != cache_key("a" * 64, [*configure_args(ccache=True), "--enable-debug"])
    assert len(key) == 16


def test_wheels_from_pythondeps() -> None:
    assert python_wheels(PYTHONDEPS_10_2) == ("meson==1.9.0", "pycotap==1.3.1")
    assert python_wheels(None) == DEFAULT_WHEELS
    assert python_wheels("[docs]\nsphinx = { installed = '6.2.1' }\n") == DEFAULT_WHEELS


def test_edk2_unpacking_turned_off_everywhere() -> None:
    text = "x = 1\nunpack_edk2_blobs = false\nif y\n    unpack_edk2_blobs = bzip2.found()\nendif\n"
    fixed = turn_off_edk2(text)
    assert fixed.count("unpack_edk2_blobs = false") == 2 and "bzip2.found()" not in fixed
    with pytest.raises(BuildError, match="new QEMU layout"):
        turn_off_edk2("project('qemu')\n")


def test_a_404_from_the_mirror_is_said_plainly() -> None:
    offer = SourceOffer("1:10.1.0+ds-1", "sid")
    tail = "E: Failed to fetch http://mirror/debian/pool/main/q/qemu/qemu_10.1.0+ds.orig.tar.xz  404  Not Found"
    failed = BuildError(f"apt-get source qemu=1:10.1.0+ds-1: failed with exit status 100:\n{tail}", log_tail=tail)
    said = missing_from_mirror(failed, offer)
    assert "no longer has the source files of qemu 1:10.1.0+ds-1 (sid)" in str(said)
    assert "404 Not Found" in str(said) and tail in str(said)
    other = BuildError("apt-get source: failed with exit status 100:\nE: Unable to find a source package")
    assert missing_from_mirror(other, offer) is other


def test_a_release_falls_back_to_older_offers_the_mirror_still_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offers = [SourceOffer("1:11.1.3+ds-2~bpo13+1", "trixie-backports"), SourceOffer("1:11.1.2+ds-3", "forky"),
              SourceOffer("1:11.1.3+ds-1", "sid"), SourceOffer("1:10.2.2+ds-1", "sid")]  # fmt: skip
    assert ranked(parse_spec("11.1"), offers) == [offers[0], offers[2], offers[1]]  # ds-2~bpo13+1 > ds-1
    recipe = QemuRecipe(tmp_path, log=lambda _m: None)
    monkeypatch.setattr(recipe, "offers", lambda: offers)
    tried: list[str] = []

    def fetch(offer: SourceOffer) -> Path:
        tried.append(offer.version)
        if offer.suite != "forky":
            raise missing_from_mirror(BuildError("404  Not Found", log_tail="404  Not Found"), offer)
        tarball = tmp_path / "qemu_11.1.2+ds.orig.tar.xz"
        tarball.write_bytes(b"tarball")
        return tarball

    monkeypatch.setattr(recipe, "fetch_tarball", fetch)
    assert recipe.debian_source("11.1").debian_version == "1:11.1.2+ds-3"
    assert tried == ["1:11.1.3+ds-2~bpo13+1", "1:11.1.3+ds-1", "1:11.1.2+ds-3"]
    monkeypatch.setattr(recipe, "offers", lambda: offers[:1] + offers[2:])
    with pytest.raises(BuildError, match=r"none of the 2 versions of qemu 11.1 .*answer 404 Not Found"):
        recipe.debian_source("11.1")
    with pytest.raises(BuildError, match=r"no longer has the source files of qemu 1:11.1.3\+ds-1 \(sid\)"):
        recipe.debian_source("1:11.1.3+ds-1")  # an exact version: no fallback


def test_ninja_progress(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    assert ninja_progress(log) is None
    log.write_text("$ ninja\n[1/2500] Compiling C object a.o\n[37/2500] Compiling C object b.o\nwarning: x\n")
    assert ninja_progress(log) == (37, 2500)


def _tiny_qemu_tarball(tmp_path: Path) -> Path:
    """A tarball shaped like Debian's +ds one: top folder, configure, meson.build, pythondeps.toml, no wheels."""
    top = tmp_path / "tree" / "qemu-10.2.2"
    (top / "python" / "wheels").mkdir(parents=True)
    (top / "configure").write_text("#!/bin/sh\nexit 0\n")
    (top / "meson.build").write_text("unpack_edk2_blobs = false\nunpack_edk2_blobs = bzip2.found()\n")
    (top / "pythondeps.toml").write_text(PYTHONDEPS_10_2)
    tarball = tmp_path / "qemu_10.2.2+ds.orig.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        tar.add(top, arcname="qemu-10.2.2")
    return tarball


def test_preparation_of_a_ds_tarball(tmp_path: Path) -> None:
    """unpack + make_buildable on a tiny tarball: the pinned wheels (from the wheels cache, no download) land
    in python/wheels and the edk2 unpacking is off."""
    tarball = _tiny_qemu_tarball(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("meson-1.9.0-py3-none-any.whl", "pycotap-1.3.1-py3-none-any.whl", "meson-1.5.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"wheel")
    top = unpack(tarball, tmp_path / "src")
    make_buildable(Runner(BuildError), top, wheels)
    assert sorted(p.name for p in (top / "python" / "wheels").iterdir()) == [
        "meson-1.9.0-py3-none-any.whl",
        "pycotap-1.3.1-py3-none-any.whl",
    ]
    assert "bzip2" not in (top / "meson.build").read_text()
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        tar.add(tmp_path / "wheels", arcname="wheels")
    with pytest.raises(BuildError, match="not a QEMU source tarball"):
        unpack(other, tmp_path / "other")


def test_local_sources_digest_content(tmp_path: Path) -> None:
    tarball = _tiny_qemu_tarball(tmp_path)
    tree = tmp_path / "tree" / "qemu-10.2.2"
    first = QemuRecipe.local_source(tree)
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref: x\n")
    assert QemuRecipe.local_source(tree).digest == first.digest  # version control is not the source
    (tree / "configure").write_text("#!/bin/sh\nexit 1\n")
    assert QemuRecipe.local_source(tree).digest != first.digest
    assert first.origin == f"built from {tree.resolve()}"
    assert QemuRecipe.local_source(tarball).tarball == tarball.resolve()
    with pytest.raises(BuildError, match="neither a QEMU source tree"):
        QemuRecipe.local_source(tmp_path)


def _built_entry(root: Path, key: str, origin: str) -> Path:
    binary = root / key / BINARY_REL
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / key / MANIFEST).write_text(json.dumps({"origin": origin, "qemu_version": "10.2.2"}))
    return binary


def test_built_qemus_are_found_with_their_origin(tmp_path: Path) -> None:
    binary = _built_entry(tmp_path, "0123456789abcdef", "built from Debian source 10.2.2+ds-1")
    (tmp_path / ".0123-unfinished" / "usr" / "bin").mkdir(parents=True)  # a staging folder: no manifest
    found = built_qemus(tmp_path)
    assert [(path, origin) for path, origin, _ in found] == [(str(binary), "built from Debian source 10.2.2+ds-1")]
    assert built_qemus(tmp_path / "absent") == []


def test_built_tree_runs_with_debian_firmware(tmp_path: Path) -> None:
    binary = _built_entry(tmp_path, "k", "built from /src/qemu")
    env, args = _layout_for(binary)
    expected = [a for d in FIRMWARE_DIRS if Path(d).is_dir() for a in ("-L", d)]
    assert env == {} and list(args) == expected
    (tmp_path / "k" / "usr" / "share" / "qemu").mkdir(parents=True)  # a tree with its own firmware folder
    assert "/usr/share/qemu" not in built_layout(tmp_path / "k")[1]


def _binary(version: str) -> QemuBinary:
    return QemuBinary(path=f"/q/{version}", version=Version.parse(f"QEMU emulator version {version}"), version_text="")


def test_qemu_option_accepts_a_version() -> None:
    found = [_binary("7.2.19"), _binary("10.0.2"), _binary("10.2.2")]
    assert is_version_request("10.2") and is_version_request("10.2.2")
    assert not is_version_request("qemu-system-x86_64") and not is_version_request("10")
    assert select_version("10.2", found).path == "/q/10.2.2"
    assert select_version("10.0.2", found).path == "/q/10.0.2"
    with pytest.raises(UsageError, match=r"no QEMU 11\.1 found \(versions found: 7\.2\.19, 10\.0\.2, 10\.2\.2\)"):
        select_version("11.1", found)


def test_a_local_tree_is_built_under_the_tarballs_folder_name(tmp_path: Path) -> None:
    tree = tmp_path / "my-checkout"
    tree.mkdir()
    assert tree_folder(tree) == "my-checkout"  # no VERSION file: the folder's own name
    (tree / "VERSION").write_text("10.2.2\n")
    assert tree_folder(tree) == "qemu-10.2.2"  # what qemu_10.2.2+ds.orig.tar.xz unpacks to: ccache hits
    (tree / "VERSION").write_text("../../etc\n")
    assert tree_folder(tree) == "my-checkout"
