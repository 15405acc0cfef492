"""Fixtures for the tests that run real QEMU: every discovered binary (both versions here), a private
work folder, and a session-wide check that no QEMU outlives the suite."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from harness import procutil
from harness.binaries import discover_binaries

_BINARIES = discover_binaries()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qemu_binary" in metafunc.fixturenames:
        if _BINARIES:
            metafunc.parametrize("qemu_binary", _BINARIES, ids=[str(b.version) for b in _BINARIES])
        else:
            metafunc.parametrize(
                "qemu_binary",
                [
                    pytest.param(
                        None,
                        marks=pytest.mark.skip(reason="no QEMU binary found (QEMU_BINARY, scripts/setup.sh, or PATH)"),
                    )
                ],
            )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/qemu/" in str(item.fspath):
            item.add_marker(pytest.mark.qemu)


@pytest.fixture(scope="session", autouse=True)
def no_qemu_left_behind() -> Iterator[None]:
    """After the suite: the registry is empty and every QEMU this process started is gone."""
    yield
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and procutil.started_still_running():
        time.sleep(0.05)
    alive = procutil.started_still_running()
    live = procutil.live_processes()
    procutil.kill_all()
    assert not live, f"QEMU processes still registered after the suite: {live}"
    assert not alive, f"QEMU processes still running after the suite: {alive}"
