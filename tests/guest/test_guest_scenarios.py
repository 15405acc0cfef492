"""Guest scenarios through the scenario path (loader -> executor -> comparison), proving the check can fail there.

tests/guest/test_guest.py proves the memory check finds a corrupted page when a test drives QEMU itself; this
proves the same through the executor the suite uses: a hook (harness.execution.guest.GuestCheck) overwrites one page of
the destination guest just before the executor's check, and the outcome must name exactly that page, and the
comparison with the model must then diverge in ``guest`` and nowhere else.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from harness.binaries import QemuBinary, discover_binaries
from harness.compare import compare
from harness.errors import GuestCheckError
from harness.execution.guest import GuestCheck
from harness.executor import run_scenario
from harness.guest.image import GuestImage, GuestImageError, build_image
from harness.guest.poke import poke_guest_memory
from harness.guest.session import page_gpa_blocking
from harness.loader import load_scenario
from harness.probe import host_facts
from harness.runner import default_predict
from harness.suite import SUITE_DIR

SCENARIOS = SUITE_DIR
VERSIONS = ("10.0", "7.2")
# QEMU 7.2.22 under TCG loses dirty pages when precopy runs several passes (docs/qemu-bugs.md section 4); this
# test is about the check, so on 7.2 the migration sends everything in one stop after the first pass.
SINGLE_PASS_72 = {"downtime-limit": 20000}
CORRUPTION = b"\xde\xad\xbe\xef" * 4


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    try:
        return build_image()
    except GuestImageError as exc:
        pytest.skip(f"guest image cannot be built here: {exc}")


@pytest.fixture(params=VERSIONS)
def qemu(request: pytest.FixtureRequest) -> QemuBinary:
    for binary in discover_binaries():
        if f"{binary.version.major}.{binary.version.minor}" == request.param:
            return binary
    pytest.skip(f"QEMU {request.param} is not installed (scripts/setup.sh installs 10.x and 7.2)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: the gdbstub's Unix socket path must stay under 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="mc-gscn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.qemu
@pytest.mark.usefixtures("guest_image")
def test_one_page_corrupted_before_the_check_is_reported_and_diverges(qemu: QemuBinary, workdir: Path) -> None:
    scenario = load_scenario(SCENARIOS / "guest-precopy-tcp.toml")
    assert scenario.guest is not None and scenario.migration is not None
    pages = scenario.guest.memory_mib * 256
    if (qemu.version.major, qemu.version.minor) == (7, 2):
        scenario = replace(scenario, migration=replace(scenario.migration, parameters=SINGLE_PASS_72))
    victim = pages // 2 + 7
    poked: list[tuple[str, int]] = []

    async def corrupt_one_page(check: GuestCheck) -> None:
        # Stop rewriting first, or the workload would rewrite (and so repair) the page before the check.
        await asyncio.to_thread(check.console.check, "memload rate 0")
        gpa = await asyncio.to_thread(page_gpa_blocking, check.console, victim)

        async def hmp(line: str) -> object:
            return await check.vm.qmp("human-monitor-command", {"command-line": line})

        await poke_guest_memory(hmp, check.workdir / "gdb.sock", gpa + 1024, CORRUPTION)
        poked.append((check.side, gpa))

    outcome = run_scenario(scenario, qemu, workdir=workdir, timeout=60.0, guest_hook=corrupt_one_page)

    assert outcome.verdict == "completed", outcome.to_json()
    assert [side for side, _ in poked] == ["destination"], "the hook must run once, on the destination"
    assert outcome.guest == {"alive": True, "pages_checked": pages, "bad_pages": 1, "first_bad": victim}, (
        outcome.extra.get("guest_check")
    )
    assert outcome.extra["guest_check"]["torn"] == 1, outcome.extra["guest_check"]

    model = default_predict()(scenario, qemu.version, host_facts(qemu, outcome.accel or "auto"))
    assert model.guest == {"alive": True, "bad_pages": 0}
    comparison = compare(model, outcome)
    assert not comparison.agree
    assert list(comparison.differences) == ["guest"], comparison.differences
    assert comparison.differences["guest"][1]["first_bad"] == victim


@pytest.mark.qemu
@pytest.mark.usefixtures("guest_image")
def test_postcopy_scenario_really_switches_while_the_guest_writes(qemu: QemuBinary, workdir: Path) -> None:
    """guest-postcopy-switch must test postcopy, not a precopy that ended before the switch: the executor paces
    precopy (pace_for_postcopy), so the destination must fault pages in (postcopy-requests > 0)."""
    scenario = load_scenario(SCENARIOS / "guest-postcopy-switch.toml")
    outcome = run_scenario(scenario, qemu, workdir=workdir, timeout=60.0)
    if outcome.verdict == "skipped":
        pytest.skip(outcome.skip_reason or "skipped by the executor")
    assert outcome.verdict == "completed", outcome.to_json()
    passes = outcome.extra.get("ram_passes")
    assert passes and passes[-1].get("postcopy-requests", 0) > 0, passes
    assert outcome.guest is not None and outcome.guest["alive"] and outcome.guest["bad_pages"] == 0, outcome.extra.get(
        "guest_check"
    )


@pytest.mark.qemu
@pytest.mark.usefixtures("guest_image")
def test_precopy_scenario_iterates_over_ram(qemu: QemuBinary, workdir: Path) -> None:
    """guest-precopy-tcp must make precopy run several passes (the writing guest keeps pages dirty), or it would
    not test the dirty log at all. The pass count is QEMU's and does not depend on 7.2's page loss, which happens
    at the end (docs/qemu-bugs.md section 4): the guest's fate is the conformance suite's known divergence."""
    scenario = load_scenario(SCENARIOS / "guest-precopy-tcp.toml")
    outcome = run_scenario(scenario, qemu, workdir=workdir, timeout=60.0)
    assert outcome.verdict in ("completed", "failed"), outcome.to_json()
    passes = outcome.extra.get("ram_passes")
    assert passes and passes[-1].get("dirty-sync-count", 0) >= 3, passes


@pytest.mark.qemu
@pytest.mark.usefixtures("guest_image")
def test_a_check_that_examined_nothing_is_a_harness_error(qemu: QemuBinary, workdir: Path) -> None:
    """A live guest whose verify output says nothing about its memory must not be recorded as "alive, 0 bad
    pages" (which would agree with the model having checked nothing): the hook takes the workload's binary away
    on the destination just before the check, so `memload verify` answers "not found"."""
    scenario = load_scenario(SCENARIOS / "guest-precopy-tcp.toml")
    assert scenario.migration is not None
    if (qemu.version.major, qemu.version.minor) == (7, 2):
        scenario = replace(scenario, migration=replace(scenario.migration, parameters=SINGLE_PASS_72))
    broken: list[str] = []

    async def break_verify(check: GuestCheck) -> None:
        await asyncio.to_thread(check.console.check, 'mv "$(command -v memload)" /memload.gone')
        broken.append(check.side)

    with pytest.raises(GuestCheckError) as info:
        run_scenario(scenario, qemu, workdir=workdir, timeout=60.0, guest_hook=break_verify)
    assert broken == ["destination"]
    assert info.value.side == "destination"
    assert "no result line" in str(info.value) and "not found" in info.value.output, str(info.value)
