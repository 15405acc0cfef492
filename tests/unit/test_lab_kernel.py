"""Unit tests of the VFIO lab's kernel choice and module order (harness/vfio_lab/kernel.py).

No apt here: apt-cache's answers are replaced by a small fake, the modules by files with a modinfo line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from harness.buildkit import Apt, Runner
from harness.vfio_lab.kernel import KernelPackages, LabBuildError, module_closure, resolve_kernel


class FakeApt(Apt):
    """apt-cache's answers, fixed: the package names apt knows and each package's versions."""

    def __init__(self, names: str, versions: dict[str, set[str]]) -> None:
        super().__init__(Runner())
        self._names, self._versions = names.split(), versions

    def names(self, prefix: str) -> list[str]:
        return [n for n in self._names if n.startswith(prefix)]

    def versions(self, packages: Iterable[str]) -> dict[str, list[str]]:
        return {p: sorted(self._versions.get(p, set())) for p in packages}


def test_resolve_kernel_takes_the_newest_release_with_every_package() -> None:
    # 6.12.120 has no linux-source at its version yet: the choice falls back to 6.12.117.
    names = "linux-image-6.12.120+deb12-amd64-unsigned linux-image-6.12.117+deb12-amd64-unsigned "
    names += "linux-image-6.12.117+deb12-rt-amd64-unsigned"
    versions = {
        "linux-image-6.12.120+deb12-amd64-unsigned": {"6.12.120-1~deb12u1"},
        "linux-headers-6.12.120+deb12-amd64": {"6.12.120-1~deb12u1"},
        "linux-headers-6.12.120+deb12-common": {"6.12.120-1~deb12u1"},
        "linux-kbuild-6.12.120+deb12": {"6.12.120-1~deb12u1"},
        "linux-image-6.12.117+deb12-amd64-unsigned": {"6.12.117-1~deb12u1"},
        "linux-headers-6.12.117+deb12-amd64": {"6.12.117-1~deb12u1"},
        "linux-headers-6.12.117+deb12-common": {"6.12.117-1~deb12u1"},
        "linux-kbuild-6.12.117+deb12": {"6.12.117-1~deb12u1"},
        "linux-source-6.12": {"6.12.117-1~deb12u1", "6.12.115-2~deb12u1"},
    }
    chosen = resolve_kernel("6.12", FakeApt(names, versions))
    assert chosen == KernelPackages("6.12", "6.12.117+deb12", "6.12.117-1~deb12u1", "linux-kbuild-6.12.117+deb12")
    assert chosen.release == "6.12.117+deb12-amd64"


def test_resolve_kernel_accepts_a_per_series_kbuild() -> None:
    """Before 6.12 Debian's kbuild package is per series (linux-kbuild-6.1), not per ABI."""
    have = {
        "linux-image-6.1.0-56-amd64-unsigned",
        "linux-headers-6.1.0-56-amd64",
        "linux-headers-6.1.0-56-common",
        "linux-kbuild-6.1",
        "linux-source-6.1",
    }
    apt = FakeApt("linux-image-6.1.0-56-amd64-unsigned", {p: {"6.1.192-2"} for p in have})
    assert resolve_kernel("6.1", apt).kbuild == "linux-kbuild-6.1"


def test_resolve_kernel_says_what_is_missing() -> None:
    with pytest.raises(LabBuildError, match="bookworm-security"):
        resolve_kernel("6.12", FakeApt("", {}))


def test_module_closure_puts_dependencies_first(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    (kernel / "fs").mkdir(parents=True)
    (kernel / "fs/netfs.ko").write_bytes(b"ELF\x00depends=\x00")
    (kernel / "fs/9pnet.ko").write_bytes(b"ELF\x00depends=\x00")
    (kernel / "fs/9p.ko").write_bytes(b"ELF\x00depends=9pnet,netfs\x00")
    order = [p.name for p in module_closure(tmp_path, ["kernel/fs/9p.ko"])]
    assert sorted(order) == ["9p.ko", "9pnet.ko", "netfs.ko"]
    assert order[-1] == "9p.ko"
