"""Unit tests of the VFIO lab's kernel table and selection (harness/vfio_lab/kernels.py), its kernel choice
and module order (harness/vfio_lab/kernel.py).

No apt here: apt-cache's answers are replaced by a small fake, the modules by files with a modinfo line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from contract.scenario import PERSONALITIES
from harness.buildkit import Apt, Runner
from harness.commands.run import _vfio_source
from harness.errors import UsageError
from harness.vfio.provider import mtty_provider
from harness.vfio_lab.build import IMAGES
from harness.vfio_lab.build import main as build_main
from harness.vfio_lab.kernel import (
    KernelPackages,
    LabBuildError,
    module_closure,
    modules_path,
    resolve_kernel,
    vmlinuz_path,
)
from harness.vfio_lab.kernels import (
    DEFAULT_SERIES,
    LAB_KERNELS,
    LabKernel,
    available_lab_kernels,
    lab_kernel,
    lab_kernels,
    private_suites,
)


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


# --- the table of lab kernels (harness/vfio_lab/kernels.py) and its selection ---------------------------------


def test_the_table_has_one_default_and_lists_it_first() -> None:
    rows = lab_kernels()
    assert [k.series for k in rows if k.default] == [DEFAULT_SERIES] == [rows[0].series]
    assert len({k.series for k in rows}) == len(rows), "a series appears twice"
    assert lab_kernel(None) == lab_kernel("default") == lab_kernel(DEFAULT_SERIES) == rows[0]


def test_an_unknown_series_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no kernel series '9\.9' \(known: 6\.12, "):
        lab_kernel("9.9")


@pytest.mark.parametrize("row", LAB_KERNELS, ids=lambda k: k.series)
def test_every_row_is_buildable_from_what_the_repository_has(row: LabKernel) -> None:
    """Its Kbuild and patch exist, it offers only personalities scenarios know, and a row that needs a newer
    suite says where its compiler comes from."""
    assert (IMAGES / row.recipe.kbuild_dir / "Kbuild").is_file()
    if row.recipe.personality_patch is not None:
        assert (IMAGES / row.recipe.personality_patch).is_file()
    assert set(row.recipe.personalities) <= set(PERSONALITIES)
    assert row.recipe.note or set(row.recipe.personalities) == set(PERSONALITIES), "a reduced lab must say why"
    assert row.cheap == (row.apt == "system" and row.toolchain is None)
    if row.apt == "private":
        assert set(row.suites) <= set(private_suites())
        assert row.toolchain is not None, "a newer suite's kernel wants that suite's compiler"


def test_the_default_lab_needs_nothing_but_the_host() -> None:
    """scripts/setup.sh prepares the default lab only: it must not need a private apt index or a chroot."""
    assert lab_kernel().cheap
    assert not set(lab_kernel().suites) & set(private_suites())


def test_split_packaging_resolves_binary_modules_and_base() -> None:
    """Debian's 7.x kernels come as linux-binary, linux-modules and linux-base; only the row's ABI suffix
    counts where two suites carry the same series (7.2 in trixie-backports and in sid)."""
    row = lab_kernel("7.2")
    have = {}
    for abi, version in (("7.2.13+deb14", "7.2.13-1"), ("7.2.12+deb13", "7.2.12-1~bpo13+1")):
        pkgs = KernelPackages("7.2", abi, version, f"linux-kbuild-{abi}", "split")
        have.update({p: {version} for p in pkgs.binaries})
    have["linux-source-7.2"] = {"7.2.13-1", "7.2.12-1~bpo13+1"}
    names = "linux-binary-7.2.13+deb14-amd64 linux-binary-7.2.12+deb13-amd64 linux-binary-7.2.13+deb14-rt-amd64"
    chosen = resolve_kernel(row, FakeApt(names, have))
    assert chosen == KernelPackages("7.2", "7.2.13+deb14", "7.2.13-1", "linux-kbuild-7.2.13+deb14", "split")
    assert chosen.image == "linux-binary-7.2.13+deb14-amd64"
    assert "linux-modules-7.2.13+deb14-amd64" in chosen.packages()
    assert chosen.identity()["layout"] == "split"


def test_a_missing_private_kernel_names_its_suite_and_the_refresh() -> None:
    with pytest.raises(LabBuildError, match=r"trixie-backports.*--refresh-apt"):
        resolve_kernel("7.3", FakeApt("", {}))


def test_the_cache_key_of_the_unsigned_layout_is_what_it_was() -> None:
    """Builds made before the layout field existed keep their keys (no rebuild of every cached lab)."""
    pkgs = KernelPackages("6.12", "6.12.117+deb12", "6.12.117-1~deb12u1", "linux-kbuild-6.12.117+deb12")
    assert pkgs.identity() == {
        "series": "6.12",
        "abi": "6.12.117+deb12",
        "version": "6.12.117-1~deb12u1",
        "kbuild": "linux-kbuild-6.12.117+deb12",
    }


def test_kernel_and_modules_are_found_in_either_layout(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "boot").mkdir(parents=True)
    (old / "lib/modules/6.12.1-amd64/kernel").mkdir(parents=True)
    (new / "usr/lib/modules/7.3.4+deb13-amd64/kernel").mkdir(parents=True)
    (new / "usr/lib/modules/7.3.4+deb13-amd64/vmlinuz").write_bytes(b"")
    assert vmlinuz_path(old, "6.12.1-amd64") == old / "boot/vmlinuz-6.12.1-amd64"
    assert modules_path(old, "6.12.1-amd64") == old / "lib/modules/6.12.1-amd64"
    assert vmlinuz_path(new, "7.3.4+deb13-amd64") == new / "usr/lib/modules/7.3.4+deb13-amd64/vmlinuz"
    assert modules_path(new, "7.3.4+deb13-amd64") == new / "usr/lib/modules/7.3.4+deb13-amd64"


def test_available_lab_kernels_says_which_are_built(tmp_path: Path) -> None:
    """What a CI planner reads: one row per kernel, default first, built only where a manifest is."""
    (tmp_path / "abc").mkdir()
    manifest = {"series": "7.3", "kernel_release": "7.3.4+deb13-amd64"}
    (tmp_path / "abc/manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/manifest.json").write_text("{")
    rows = {r["series"]: r for r in available_lab_kernels(tmp_path)}
    assert list(rows) == [k.series for k in lab_kernels()]
    assert rows["7.3"]["built"] and rows["7.3"]["release"] == "7.3.4+deb13-amd64"
    assert rows["7.3"]["toolchain"] == "trixie" and not rows["7.3"]["cheap"]
    assert not rows[DEFAULT_SERIES]["built"] and rows[DEFAULT_SERIES]["default"]
    assert json.loads(json.dumps(list(rows.values()))) == list(rows.values())


def test_the_provider_and_the_cli_select_a_row() -> None:
    assert mtty_provider({"series": "7.3"}).series == "7.3"
    assert mtty_provider({}).series == DEFAULT_SERIES
    with pytest.raises(ValueError, match="known: "):
        mtty_provider({"series": "9.9"})
    args = argparse.Namespace(vfio_option=["variant=iovabm"], lab_kernel="7.3", vfio_provider=None, vfio_device=[])
    assert _vfio_source(args) == ("mtty", {"variant": "iovabm", "series": "7.3"})
    args.vfio_provider = "host"
    with pytest.raises(UsageError, match="--lab-kernel"):
        _vfio_source(args)


def test_the_build_command_lists_the_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGCONFORM_CACHE", str(tmp_path))
    assert build_main(["--list"]) == 0
    assert [r["series"] for r in json.loads(capsys.readouterr().out)] == [k.series for k in lab_kernels()]
