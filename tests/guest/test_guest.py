"""Real guests across real migrations, on every QEMU version the set-up installed (10.0 and 7.2).

Each QEMU test boots the Debian-package guest image (under TCG, unless harness.probe found that KVM boots Linux on
this host: harness.guest.lab.guest_accel), starts the memload workload rewriting pages while
the migration runs, and after the migration asks the destination guest to check every page (docs/guests.md). The
unit tests at the top check the pure parts (sizes, arguments, the cache key) and the workload program itself,
run natively on the host.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.binaries import QemuBinary, discover_binaries
from harness.errors import QmpCommandError
from harness.guest import image as image_module
from harness.guest.image import GuestImage, GuestImageError, build_image
from harness.guest.lab import ENDED, GuestLab, set_capabilities, wait_runstate, wait_status
from harness.guest.poke import poke_guest_memory
from harness.guest.session import (
    GuestReport,
    GuestSpec,
    generation_blocking,
    guest_vm_args,
    page_gpa_blocking,
    parse_mib,
    start,
    verify,
    verify_blocking,
)
from harness.machine import QemuMachine
from harness.probe import host_facts

VERSIONS = ("10.0", "7.2")
SPEC = GuestSpec(memory="16M", dirty_rate=2000, boot_timeout=60.0)
MIGRATION_TIMEOUT = 60.0

# --------------------------------------------------------------------------------------------- pure logic


def test_parse_mib_accepts_qemu_style_sizes() -> None:
    assert parse_mib("64M") == 64
    assert parse_mib("1G") == 1024
    assert parse_mib("512MiB") == 512
    assert parse_mib("2048K") == 2
    assert parse_mib("32") == 32
    with pytest.raises(ValueError, match="expected a number"):
        parse_mib("lots")


def test_guest_spec_rejects_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="dirty-rate"):
        GuestSpec(dirty_rate=-1)
    with pytest.raises(ValueError, match='only "default"'):
        GuestSpec(image="fedora")


def test_both_sides_get_the_same_boot_files(tmp_path: Path) -> None:
    img = GuestImage(tmp_path / "k", tmp_path / "i", "console=ttyS0", "d", "k=1", "1")
    src = guest_vm_args(img, SPEC, "source", console_socket=tmp_path / "s.sock")
    dst = guest_vm_args(img, SPEC, "destination", console_socket=tmp_path / "d.sock", ram_file=tmp_path / "ram",
                        ram_size="128M")  # fmt: skip
    for args in (src, dst):
        assert args[args.index("-kernel") + 1] == str(tmp_path / "k")
        assert args[args.index("-initrd") + 1] == str(tmp_path / "i")
        assert args[args.index("-append") + 1] == "console=ttyS0"
    assert "memory-backend-file,id=mc-ram,size=128M,mem-path=" + str(tmp_path / "ram") + ",share=on" in dst
    with pytest.raises(ValueError, match="side"):
        guest_vm_args(img, SPEC, "middle", console_socket=tmp_path / "x")


def test_cache_key_follows_every_source_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = tmp_path / "src"
    shutil.copytree(image_module.SOURCES, sources)
    monkeypatch.setattr(image_module, "SOURCES", sources)
    kernel, busybox = tmp_path / "k.deb", tmp_path / "b.deb"
    kernel.write_bytes(b"kernel")
    busybox.write_bytes(b"busybox")
    first = image_module.input_digest(kernel, busybox)
    assert image_module.input_digest(kernel, busybox) == first
    (sources / "init").write_text((sources / "init").read_text() + "\n# changed\n")
    second = image_module.input_digest(kernel, busybox)
    assert second != first
    kernel.write_bytes(b"another kernel")
    assert image_module.input_digest(kernel, busybox) not in (first, second)


# ------------------------------------------------------------------------------ the workload, on the host


@pytest.fixture(scope="module")
def host_memload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("memload") / "memload"
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (scripts/setup-guest.sh installs it)")
    subprocess.run(
        ["gcc", *image_module.WORKLOAD_CFLAGS, "-o", str(out), str(image_module.SOURCES / "memload.c")], check=True
    )
    return out


def test_memload_on_the_host_fills_rewrites_and_checks(host_memload: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="mc-memload-"))
    env = {**os.environ, "MEMLOAD_RUN_DIR": str(run_dir)}
    daemon = subprocess.Popen([str(host_memload), "daemon", "4", "50000"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline().startswith("memload: ready pages=1024")

        def ask(*command: str) -> str:
            done = subprocess.run([str(host_memload), *command], env=env, capture_output=True, text=True, timeout=10)
            return done.stdout.strip()

        first = int(ask("status").split()[0].split("=")[1])
        deadline = time.monotonic() + 10
        while int(ask("status").split()[0].split("=")[1]) <= first + 2048 and time.monotonic() < deadline:
            time.sleep(0.05)  # until every page has been rewritten at least twice
        report = ask("verify")
        assert report.startswith("pages_checked=1024 bad_pages=0 first_bad=none torn=0 stale=0 future=0"), report
        assert int(report.rsplit("generation=", 1)[1]) > first + 2048
        assert ask("rate", "0") == "rate=0"
        assert ask("bogus").startswith("error: unknown command")
    finally:
        daemon.kill()
        daemon.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------- real QEMU guests


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    try:
        return build_image()
    except GuestImageError as exc:
        pytest.skip(f"guest image cannot be built here: {exc}")


def _binary(version: str) -> QemuBinary:
    for binary in discover_binaries():
        if f"{binary.version.major}.{binary.version.minor}" == version:
            return binary
    pytest.skip(f"QEMU {version} is not installed (scripts/setup.sh installs 10.x and 7.2)")


@pytest.fixture(params=VERSIONS)
def qemu(request: pytest.FixtureRequest) -> QemuBinary:
    return _binary(str(request.param))


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: Unix socket paths must stay under 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="mc-guest-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def _assert_clean(report: GuestReport, pages: int, where: str = "destination") -> None:
    assert report.alive, f"{where}: {report.detail}"
    assert report.pages_checked == pages, f"{where}: {report.detail}"
    assert report.bad_pages == 0, f"{where}: {report.detail}"


def _is_72(qemu: QemuBinary) -> bool:
    return (qemu.version.major, qemu.version.minor) == (7, 2)


# QEMU 7.2.22 under TCG loses dirty pages once precopy runs several passes (docs/guests.md). The tests whose
# subject is not precopy's iteration (cancel and retry, corruption detection) make 7.2's migration finish after
# the first pass, with a downtime limit large enough to send the rest in one stop, so they test what they are
# about. test_precopy_over_many_passes is the one that iterates on purpose.
SINGLE_PASS_72 = {"downtime-limit": 20000}


async def _avoid_72_page_loss(qemu: QemuBinary, vm: QemuMachine) -> None:
    if _is_72(qemu):
        await vm.qmp("migrate-set-parameters", SINGLE_PASS_72)


@pytest.mark.qemu
def test_precopy_over_many_passes(
    qemu: QemuBinary, guest_image: GuestImage, workdir: Path, request: pytest.FixtureRequest
) -> None:
    """Precopy slow enough (32 MiB/s) to need several passes over RAM while the guest writes; every page must
    arrive in its latest version.

    QEMU 7.2.22 under TCG loses pages here: the destination's RAM differs from the stopped source's in a few
    pages (kernel data and the workload's), the check reports them and the guest often panics (docs/guests.md).
    QEMU 10.0.2 passes every time. An expected failure on 7.2, not strict: a run may get lucky.
    """
    if _is_72(qemu):
        reason = "QEMU 7.2.22 loses dirty pages in multi-pass precopy under TCG (docs/guests.md)"
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))

    async def scenario() -> None:
        lab = GuestLab(qemu, guest_image, SPEC, workdir)
        try:
            src = await lab.launch("source", "source")
            dst = await lab.launch("destination", "destination", incoming=True)
            pages = await start(await src.console(), SPEC)
            await src.machine.qmp("migrate-set-parameters", {"max-bandwidth": 32 << 20})
            uri = f"unix:{workdir}/migration.sock"
            await dst.machine.qmp("migrate-incoming", uri=uri)
            await src.machine.qmp("migrate", uri=uri)
            final = await wait_status(src.machine, ENDED, MIGRATION_TIMEOUT)
            assert final["status"] == "completed", final
            # The workload kept dirtying pages, so precopy needed more than one pass over RAM.
            assert final["ram"]["dirty-sync-count"] >= 3, final["ram"]
            await wait_runstate(dst.machine, ("running",), 10)
            _assert_clean(await verify(await dst.console()), pages)
        finally:
            await lab.shutdown()

    _run(scenario())


@pytest.mark.qemu
def test_postcopy_switched_while_the_guest_writes(qemu: QemuBinary, guest_image: GuestImage, workdir: Path) -> None:
    async def scenario() -> None:
        lab = GuestLab(qemu, guest_image, SPEC, workdir)
        try:
            src = await lab.launch("source", "source")
            dst = await lab.launch("destination", "destination", incoming=True)
            pages = await start(await src.console(), SPEC)
            await set_capabilities(src.machine, events=True)
            await set_capabilities(src.machine, postcopy_ram=True)  # only the destination asks the host
            if not host_facts(qemu, "auto").userfaultfd:
                # No userfaultfd for this QEMU here (probed): the destination must refuse postcopy, as the
                # model says for such a host (migrate_caps_check); that is this host's answer.
                with pytest.raises(QmpCommandError) as refused:
                    await set_capabilities(dst.machine, postcopy_ram=True)
                assert refused.value.desc.startswith("Postcopy is not supported"), refused.value.desc
                return
            await set_capabilities(dst.machine, postcopy_ram=True)
            # Slow precopy, so most of RAM is still on the source when postcopy starts and must be faulted in.
            await src.machine.qmp("migrate-set-parameters", {"max-bandwidth": 4 << 20})
            uri = f"unix:{workdir}/migration.sock"
            await dst.machine.qmp("migrate-incoming", uri=uri)
            await src.machine.qmp("migrate", uri=uri)
            await wait_status(src.machine, ("active",), 20)
            await src.machine.qmp("migrate-start-postcopy")
            final = await wait_status(src.machine, ENDED, MIGRATION_TIMEOUT)
            assert final["status"] == "completed", final
            assert "postcopy-active" in src.machine.migration_events()
            # The running destination asked for pages it touched before they had been pushed.
            assert final["ram"]["postcopy-requests"] > 0, final["ram"]
            await wait_runstate(dst.machine, ("running",), 10)
            _assert_clean(await verify(await dst.console()), pages)
        finally:
            await lab.shutdown()

    _run(scenario())


@pytest.mark.qemu
def test_background_snapshot_holds_the_moment_it_started(
    qemu: QemuBinary, guest_image: GuestImage, workdir: Path
) -> None:
    async def scenario() -> None:
        lab = GuestLab(qemu, guest_image, SPEC, workdir)
        snapshot = workdir / "snapshot.bin"
        try:
            src = await lab.launch("source", "source")
            console = await src.console()
            pages = await start(console, SPEC)
            state_gpa = await asyncio.to_thread(page_gpa_blocking, console, "state")
            if not host_facts(qemu, "auto").uffd_wp:
                # No UFFD write-protect for this QEMU here (probed): QEMU must refuse, as the model says.
                with pytest.raises(QmpCommandError) as refused:
                    await set_capabilities(src.machine, background_snapshot=True)
                assert refused.value.desc == "Background-snapshot is not supported by host kernel"
                return
            await set_capabilities(src.machine, background_snapshot=True)
            before = await asyncio.to_thread(generation_blocking, console)
            await src.machine.qmp("migrate", uri=f"exec:cat > {snapshot}")
            final = await wait_status(src.machine, ENDED, MIGRATION_TIMEOUT)
            assert final["status"] == "completed", final
            after = await asyncio.to_thread(generation_blocking, console)

            dst = await lab.launch("destination", "destination", incoming=True, paused=True)
            await dst.machine.qmp("migrate-incoming", uri=f"exec:cat {snapshot}")
            await wait_status(dst.machine, ENDED, MIGRATION_TIMEOUT)
            # The loaded VM is still paused: read the workload's write count G straight from its RAM.
            dump = workdir / "generation.bin"
            await dst.machine.qmp("pmemsave", val=state_gpa, size=8, filename=str(dump))
            restored = int.from_bytes(dump.read_bytes(), "little")
            assert before <= restored < after, (before, restored, after)
            await dst.machine.qmp("cont")
            report = await verify(await dst.console())
            _assert_clean(report, pages)
            # The check ran against the restored G plus what the guest wrote since: the image was one moment.
            assert report.generation >= restored
        finally:
            await lab.shutdown()

    _run(scenario())


@pytest.mark.qemu
def test_cancel_then_retry(qemu: QemuBinary, guest_image: GuestImage, workdir: Path) -> None:
    async def scenario() -> None:
        lab = GuestLab(qemu, guest_image, SPEC, workdir)
        try:
            src = await lab.launch("source", "source")
            first = await lab.launch("destination", "destination", incoming=True)
            source_console = await src.console()
            pages = await start(source_console, SPEC)
            default_bandwidth = (await src.machine.qmp("query-migrate-parameters"))["max-bandwidth"]
            await src.machine.qmp("migrate-set-parameters", {"max-bandwidth": 1 << 20})
            uri = f"unix:{workdir}/first.sock"
            await first.machine.qmp("migrate-incoming", uri=uri)
            await src.machine.qmp("migrate", uri=uri)
            await wait_status(src.machine, ("active",), 20)
            await src.machine.qmp("migrate_cancel")
            cancelled = await wait_status(src.machine, ENDED, 20)
            assert cancelled["status"] == "cancelled", cancelled
            assert await src.machine.runstate() == "running"
            await first.shutdown()
            # The source guest is intact after the cancel.
            _assert_clean(await asyncio.to_thread(verify_blocking, source_console), pages, "source after cancel")

            second = await lab.launch("destination2", "destination", incoming=True)
            await src.machine.qmp("migrate-set-parameters", {"max-bandwidth": default_bandwidth})
            await _avoid_72_page_loss(qemu, src.machine)
            uri = f"unix:{workdir}/second.sock"
            await second.machine.qmp("migrate-incoming", uri=uri)
            await src.machine.qmp("migrate", uri=uri)
            final = await wait_status(src.machine, ENDED, MIGRATION_TIMEOUT)
            assert final["status"] == "completed", final
            await wait_runstate(second.machine, ("running",), 10)
            _assert_clean(await verify(await second.console()), pages, "second destination")
        finally:
            await lab.shutdown()

    _run(scenario())


@pytest.mark.qemu
def test_precopy_then_one_corrupted_page_is_found(qemu: QemuBinary, guest_image: GuestImage, workdir: Path) -> None:
    """Precopy while the guest writes, a clean check on the destination; then the check can fail: one page
    overwritten behind the guest's back is found, and only that page. The write goes through the destination's
    gdbstub in physical-address mode (harness.guest.poke)."""

    async def scenario() -> None:
        lab = GuestLab(qemu, guest_image, SPEC, workdir)
        try:
            src = await lab.launch("source", "source")
            dst = await lab.launch("destination", "destination", incoming=True)
            pages = await start(await src.console(), SPEC)
            await _avoid_72_page_loss(qemu, src.machine)
            uri = f"unix:{workdir}/migration.sock"
            await dst.machine.qmp("migrate-incoming", uri=uri)
            await src.machine.qmp("migrate", uri=uri)
            final = await wait_status(src.machine, ENDED, MIGRATION_TIMEOUT)
            assert final["status"] == "completed", final
            await wait_runstate(dst.machine, ("running",), 10)
            # Before the corruption, the check must pass: the one bad page found below is the one written.
            console = await dst.console()
            _assert_clean(await asyncio.to_thread(verify_blocking, console), pages)

            # Stop rewriting first, or the workload would rewrite (and so repair) the page before the check.
            await asyncio.to_thread(console.check, "memload rate 0")
            victim = pages // 2 + 7
            gpa = await asyncio.to_thread(page_gpa_blocking, console, victim)

            async def hmp(line: str) -> object:
                return await dst.machine.qmp("human-monitor-command", {"command-line": line})

            await poke_guest_memory(hmp, workdir / "gdb.sock", gpa + 1024, b"\xde\xad\xbe\xef" * 4)
            report = await verify(console)
            assert report.alive, report.detail
            assert report.pages_checked == pages
            assert (report.bad_pages, report.first_bad, report.torn) == (1, victim, 1), report.detail
        finally:
            await lab.shutdown()

    _run(scenario())
