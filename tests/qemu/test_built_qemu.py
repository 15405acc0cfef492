"""A QEMU `migconform qemu build` made, run the way the harness runs it: found by discovery with its origin,
given Debian's firmware with ``-L``, picked by ``--qemu VERSION``, and a second build of the same source
answered from the Store at once.

Skipped (with the reason counted in pytest's summary) when the cache holds no build: building one costs tens
of minutes (`migconform qemu build 10.2`, docs/qemu-builds.md), and nothing here fakes one.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from harness.binaries import discover_binaries, load_binary, select_version
from harness.qemu_build.found import built_qemus, store_root
from harness.qemu_build.recipe import QemuRecipe

_BUILT = built_qemus()
pytestmark = pytest.mark.skipif(
    not _BUILT, reason=f"no QEMU built in {store_root()} (migconform qemu build 10.2 makes one)"
)


def test_built_qemu_starts_a_q35_machine_with_the_harness_arguments() -> None:
    path, origin, manifest = _BUILT[-1]
    binary = load_binary(path, origin=origin)
    assert str(binary.version) == manifest["qemu_version"]
    assert origin in binary.label
    assert "-L" in binary.extra_args  # Debian's firmware folders: the tree holds none
    qmp = '{"execute": "qmp_capabilities"}\n{"execute": "query-status"}\n{"execute": "quit"}\n'
    argv = binary.argv("-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio")
    done = subprocess.run(argv, input=qmp, capture_output=True, text=True, env=binary.environ(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"status": "prelaunch"' in done.stdout


def test_built_qemu_is_discovered_and_chosen_by_version() -> None:
    path, origin, manifest = _BUILT[-1]
    found = discover_binaries()
    assert any(b.path == path and origin in b.label for b in found)
    version = str(manifest["qemu_version"])
    chosen = select_version(version, found)
    assert str(chosen.version) == version


def test_second_build_of_a_debian_source_is_answered_from_the_store() -> None:
    debian = [(path, manifest) for path, _, manifest in _BUILT if manifest.get("debian_version")]
    if not debian:
        pytest.skip("no QEMU built from Debian's source in the cache")
    path, manifest = debian[-1]
    recipe = QemuRecipe(log=lambda _message: None)
    if not recipe.apt_conf.is_file():
        pytest.skip(f"no private apt configuration at {recipe.apt_conf} (scripts/setup-qemu-build.sh)")
    start = time.monotonic()
    built = recipe.build(str(manifest["debian_version"]))
    assert built.cached and str(built.binary) == path
    assert time.monotonic() - start < 30
