"""The steps every QEMU build shares (the mutants and `migconform qemu build`): making Debian's +ds source
buildable offline, the ccache environment, and the check that a built binary starts.

Why these steps: Debian's +ds tarballs strip the Python wheels configure installs offline (meson, pycotap)
and the firmware blobs, and meson.build still looks for the edk2 blobs. The recipe downloads exactly the
wheels the tree's pythondeps.toml pins and turns the edk2 unpacking off; the firmware comes from Debian's
packages at run time (:data:`harness.qemu_build.spec.FIRMWARE_PATH`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from harness.buildkit import BuildError, Runner
from harness.qemu_build.spec import FIRMWARE_PATH, python_wheels, turn_off_edk2

NICE = ("nice", "-n", "19")
BINARY_NAME = "qemu-system-x86_64"


def unpack(tarball: Path, dest: Path) -> Path:
    """Unpacks ``tarball`` into the empty folder ``dest``; returns the one top folder it holds."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="tar")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "configure").is_file():
        raise BuildError(f"{tarball}: not a QEMU source tarball (expected one top folder with a configure script)")
    return tops[0]


def wanted_wheels(top: Path) -> tuple[str, ...]:
    deps = top / "pythondeps.toml"
    return python_wheels(deps.read_text() if deps.is_file() else None)


def fetch_wheels(
    runner: Runner, wheels_dir: Path, wanted: tuple[str, ...], log: Callable[[str], None] | None = None
) -> list[Path]:
    """The wheels ``wanted`` (``name==version``) in ``wheels_dir``, downloaded by pip when one is missing."""
    wheels_dir.mkdir(parents=True, exist_ok=True)

    def have(spec: str) -> Path | None:
        name, _, version = spec.partition("==")
        found = sorted(wheels_dir.glob(f"{name}-{version}-*.whl"))
        return found[0] if found else None

    missing = [spec for spec in wanted if have(spec) is None]
    if missing:
        if log is not None:
            log(f"downloading the {' and '.join(missing)} wheels that the +ds tarball leaves out")
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        runner.run([*pip, "-d", str(wheels_dir), *missing], what="pip download of " + " ".join(missing))
    return [p for spec in wanted if (p := have(spec)) is not None]


def make_buildable(runner: Runner, top: Path, wheels_dir: Path, log: Callable[[str], None] | None = None) -> None:
    """Puts the pinned wheels into ``top/python/wheels`` and turns the edk2 blob unpacking off."""
    wheels = top / "python" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for whl in fetch_wheels(runner, wheels_dir, wanted_wheels(top), log):
        shutil.copy2(whl, wheels / whl.name)
    meson_build = top / "meson.build"
    try:
        meson_build.write_text(turn_off_edk2(meson_build.read_text()))
    except BuildError as exc:
        raise BuildError(f"{meson_build}: {exc}".replace("meson.build: ", "", 1)) from None


def ccache_env(ccache_dir: Path, basedir: Path) -> dict[str, str]:
    """The environment of configure and ninja, with ccache's hits independent of where the tree is.

    BASEDIR and NOHASHDIR: ccache then hashes paths relative to the build folder and ignores its cwd, so
    another checkout, another MIGCONFORM_CACHE or another build folder name still hits.
    """
    ccache_dir.mkdir(parents=True, exist_ok=True)
    ccache = {"CCACHE_DIR": str(ccache_dir), "CCACHE_MAXSIZE": "5G", "CCACHE_BASEDIR": str(basedir)}
    return {**os.environ, **ccache, "CCACHE_NOHASHDIR": "1"}


def check_binary(binary: Path) -> str:
    """Start the binary the way the harness does (q35, no -L) and quit over QMP: proves it finds SeaBIOS.

    Returns the version it reports.
    """
    ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30)
    m = re.search(r"version (\d+\.\d+\.\d+)", ver.stdout)
    if ver.returncode != 0 or not m:
        raise BuildError(f"{binary} --version failed: {ver.stdout}{ver.stderr}")
    qmp_in = '{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
    res = subprocess.run(
        [str(binary), "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"],
        input=qmp_in,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if res.returncode != 0 or '"return"' not in res.stdout:
        raise BuildError(
            f"{binary} does not start a q35 machine (firmware path {FIRMWARE_PATH}; is seabios "
            f"installed?): exit {res.returncode}: {res.stderr.strip()}"
        )
    return m.group(1)
