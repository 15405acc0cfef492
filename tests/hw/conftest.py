"""Fixtures for the VFIO lab tests: the lab build and a QEMU 10 binary, or a skip that says what is missing.

Building the lab needs apt (for ``apt-get download``), dpkg, make, gcc-12, patch and zstd on the host
(scripts/setup-lab.sh installs them); booting it needs the host QEMU 10. A missing prerequisite skips
with its name; a build that fails with everything present is a test failure.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.binaries import QemuBinary, load_binary
from harness.vfio.provider import MttyLabProvider
from harness.vfio_lab.build import LabImage

HOST_QEMU = "/usr/bin/qemu-system-x86_64"
BUILD_TOOLS = ("apt-get", "apt-cache", "dpkg", "dpkg-deb", "make", "gcc-12", "patch", "zstd", "strip", "tar")


def _missing_tools() -> list[str]:
    return [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]


@pytest.fixture(scope="session")
def lab_binary() -> QemuBinary:
    if not Path(HOST_QEMU).exists():
        pytest.skip(f"the VFIO lab boots with the host QEMU {HOST_QEMU}, which is not installed")
    binary = load_binary(HOST_QEMU)
    if binary.version.major < 10:
        pytest.skip(f"the VFIO lab's expectations are for QEMU 10.x; {HOST_QEMU} is {binary.version}")
    return binary


@pytest.fixture(scope="session")
def lab_image() -> LabImage:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"building the VFIO lab needs {', '.join(missing)} (run scripts/setup-lab.sh)")
    provider = MttyLabProvider("stock")
    return provider.image


@pytest.fixture(scope="session")
def stock_lab(lab_image: LabImage) -> Iterator[MttyLabProvider]:
    provider = MttyLabProvider("stock")
    yield provider


@pytest.fixture(scope="session")
def iovabm_lab(lab_image: LabImage) -> Iterator[MttyLabProvider]:
    provider = MttyLabProvider("iovabm")
    yield provider
