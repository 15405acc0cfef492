"""Unit tests of the VFIO lab's pure logic: the mdev allocator, options (kernel choice and module order:
tests/unit/test_lab_kernel.py).

No QEMU and no apt here: apt's answers and sysfs are replaced by small fakes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.scenario import DeviceSpec
from harness.errors import ResourceUnavailable
from harness.vfio import provider as provider_mod
from harness.vfio.allocator import AllocatedDevice, VfioUnavailable
from harness.vfio_lab import build
from harness.vfio_lab.mdev import PERSONALITIES, MdevAllocator


def _fake_sysfs(root: Path, personalities: list[str]) -> tuple[Path, Path]:
    bus, devices = root / "mdev_bus", root / "devices"
    devices.mkdir(parents=True)
    for name in personalities:
        spec = PERSONALITIES[name]
        type_dir = bus / spec.parent / "mdev_supported_types" / spec.mdev_type
        type_dir.mkdir(parents=True)
        (type_dir / "available_instances").write_text("24\n")
    return bus, devices


def test_allocator_creates_one_mdev_per_device_of_its_personality_type(tmp_path: Path) -> None:
    bus, devices = _fake_sysfs(tmp_path, ["migratable", "no-p2p"])
    allocator = MdevAllocator(mdev_bus=bus, mdev_devices=devices)
    first = allocator.allocate(DeviceSpec("vfio-pci", id="vfio0"))
    second = allocator.allocate(DeviceSpec("vfio-pci", id="vfio1", personality="no-p2p"))
    assert first.host_name != second.host_name
    assert first.properties == {"sysfsdev": str(devices / first.host_name)}
    assert (bus / "mtty/mdev_supported_types/mtty-1/create").read_text() == first.host_name
    assert (bus / "mtty-nop2p/mdev_supported_types/mtty-nop2p-1/create").read_text() == second.host_name
    (devices / first.host_name).mkdir()
    (devices / first.host_name / "remove").write_text("")
    allocator.release(first)
    assert (devices / first.host_name / "remove").read_text() == "1"


def test_allocator_refuses_a_personality_the_kernel_lacks(tmp_path: Path) -> None:
    bus, devices = _fake_sysfs(tmp_path, ["no-migration"])
    allocator = MdevAllocator(["no-migration"], "no migration on this kernel", mdev_bus=bus, mdev_devices=devices)
    with pytest.raises(VfioUnavailable, match="no migration on this kernel"):
        allocator.allocate(DeviceSpec("vfio-pci", personality="migratable"))
    assert allocator.allocate(DeviceSpec("vfio-pci", personality="no-migration")).host_name


def test_allocator_refuses_a_type_the_guest_did_not_load(tmp_path: Path) -> None:
    bus, devices = _fake_sysfs(tmp_path, ["migratable"])
    with pytest.raises(ResourceUnavailable, match="mtty-nolog-1"):
        MdevAllocator(mdev_bus=bus, mdev_devices=devices).allocate(
            DeviceSpec("vfio-pci", personality="no-dirty-logging")
        )


def test_release_all_removes_what_was_not_released(tmp_path: Path) -> None:
    bus, devices = _fake_sysfs(tmp_path, ["migratable"])
    allocator = MdevAllocator(mdev_bus=bus, mdev_devices=devices)
    device: AllocatedDevice = allocator.allocate(DeviceSpec("vfio-pci"))
    (devices / device.host_name).mkdir()
    (devices / device.host_name / "remove").write_text("")
    allocator.release_all()
    assert (devices / device.host_name / "remove").read_text() == "1"


def test_provider_options() -> None:
    assert provider_mod.mtty_provider({}).variant == "stock"
    assert provider_mod.mtty_provider({"dirty-report": "works"}).variant == "iovabm"
    assert provider_mod.mtty_provider({"variant": "iovabm", "series": "6.1"}).series == "6.1"
    assert isinstance(provider_mod.get_provider("mtty", {}), provider_mod.MttyLabProvider)
    with pytest.raises(ValueError, match="unknown VFIO provider"):
        provider_mod.get_provider("vfio-real", {})
    with pytest.raises(ValueError, match="unknown option"):
        provider_mod.get_provider("mtty", {"devices": ["0000:3b:00.1"]})
    with pytest.raises(ValueError, match="unknown lab variant"):
        provider_mod.get_provider("mtty", {"variant": "both"})


def _image(tmp_path: Path) -> build.LabImage:
    return build.LabImage(
        directory=str(tmp_path),
        key="k",
        kernel_release="6.12.117+deb12-amd64",
        kernel_package_version="6.12.117-1~deb12u1",
        series="6.12",
        vmlinuz=str(tmp_path / "vmlinuz"),
        vmlinux=str(tmp_path / "vmlinux"),
        initramfs={"stock": str(tmp_path / "initramfs-stock.gz")},
        personalities=list(build.ALL_PERSONALITIES),
        unavailable_note="",
        busybox_version="1:1.35.0-4+deb12u1+b1",
    )


def test_l1_argv_boots_the_elf_with_both_shares(tmp_path: Path) -> None:
    from harness.vfio_lab.boot import AccelChoice, l1_argv

    share = tmp_path / "share"
    argv = l1_argv(_image(tmp_path), "stock", share, share / "serial.log", AccelChoice("tcg", "test"))
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "vmlinux")
    assert argv[argv.index("-accel") + 1] == "tcg" and argv[argv.index("-cpu") + 1] == "max"
    assert "local,id=hostroot,path=/,security_model=none,readonly=on" in argv
    assert f"local,id=labshare,path={share},security_model=none" in argv
    cmdline = argv[argv.index("-append") + 1].split()
    assert f"labshare={share}" in cmdline and "panic=-1" in cmdline


def test_l1_argv_under_kvm_uses_the_probes_cpu_model(tmp_path: Path) -> None:
    """Plain -cpu host aborts on some KVM hosts: the L1 QEMU takes the model harness.probe found to run."""
    from harness.vfio_lab.boot import AccelChoice, l1_argv

    share = tmp_path / "share"
    choice = AccelChoice("kvm", "test", "host,-arch-capabilities")
    argv = l1_argv(_image(tmp_path), "stock", share, share / "serial.log", choice)
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host,-arch-capabilities"


def _fake_probes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, usable: bool, boots: bool | None, pvm: bool
) -> list[str]:
    """harness.probe's answers replaced by fixed ones (the decision is what is tested here); returns the -cpu
    of every lab-kernel boot probe the choice asked for."""
    from types import SimpleNamespace

    import harness.binaries
    import harness.linux_boot
    import harness.probe
    from harness.vfio_lab import boot

    cpu = "host,-arch-capabilities" if usable else None
    kvm = harness.probe.KvmProbe(usable, cpu, "fake KVM probe")
    monkeypatch.setattr(harness.binaries, "load_binary", lambda path: SimpleNamespace(path=path))
    monkeypatch.setattr(harness.probe, "probe_binary", lambda binary: SimpleNamespace(kvm=kvm))
    monkeypatch.setattr(
        harness.linux_boot, "probe_linux_boot", lambda b: harness.probe.LinuxBootProbe(boots, "fake boot")
    )
    monkeypatch.setattr(harness.probe, "probe_host", lambda: SimpleNamespace(pvm=pvm, kvm_device=True))
    monkeypatch.setattr(boot, "lab_cache", lambda: tmp_path)
    (tmp_path / "qemu").write_text("")  # the lab's cache key reads the binary's mtime
    monkeypatch.delenv("MIGCONFORM_LAB_ACCEL", raising=False)
    asked: list[str] = []

    def lab_boot(image: object, qemu: str, cpu: str) -> boot.AccelChoice:
        asked.append(cpu)
        return boot.AccelChoice("kvm", "fake lab boot", cpu)

    monkeypatch.setattr(boot, "_probe_kvm_boot", lab_boot)
    return asked


def test_lab_accel_follows_the_boot_probe_not_the_host_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PVM host whose KVM boots Linux is tried like any other; a KVM that does not boot Linux is not."""
    from harness.vfio_lab.boot import choose_accel

    asked = _fake_probes(monkeypatch, tmp_path, usable=True, boots=True, pvm=True)
    choice = choose_accel(_image(tmp_path), str(tmp_path / "qemu"))
    assert (choice.accel, choice.cpu, asked) == ("kvm", "host,-arch-capabilities", ["host,-arch-capabilities"])


def test_lab_accel_is_tcg_when_kvm_cannot_boot_linux(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.vfio_lab.boot import choose_accel

    asked = _fake_probes(monkeypatch, tmp_path, usable=True, boots=False, pvm=False)
    choice = choose_accel(_image(tmp_path), str(tmp_path / "qemu"))
    assert (choice.accel, asked) == ("tcg", []) and "fake boot" in choice.reason
    asked = _fake_probes(monkeypatch, tmp_path, usable=False, boots=None, pvm=False)
    choice = choose_accel(_image(tmp_path), str(tmp_path / "qemu"))
    assert (choice.accel, asked) == ("tcg", []) and "fake KVM probe" in choice.reason


def test_l1_argv_rejects_a_variant_the_image_lacks(tmp_path: Path) -> None:
    from harness.vfio_lab.boot import AccelChoice, LabBootError, l1_argv

    with pytest.raises(LabBootError, match="iovabm"):
        l1_argv(_image(tmp_path), "iovabm", tmp_path, tmp_path / "log", AccelChoice("tcg", "test"))


def test_provider_host_facts_follow_the_variant(tmp_path: Path) -> None:
    for variant, works in (("stock", False), ("iovabm", True)):
        lab = provider_mod.MttyLabProvider(variant)
        lab._image = _image(tmp_path)
        facts = lab.host_facts()
        assert facts.vfio_dirty_report_works is works
        assert (facts.userfaultfd, facts.uffd_wp, facts.kvm) == (True, True, False)
        assert facts.kernel == "6.12.117+deb12-amd64"


def test_kernel_log_maps_mtty_state_arcs_to_devices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.vfio_lab.inside import KernelLog

    src, dst = "078c1e87-4323-4e32-9e9d-fdd6567c29c1", "2ce674d6-c327-4aba-8091-3ef2be988e80"
    lines = [
        f"mtty {src}: mtty_set_state -> 6",
        f"mtty {src}: mtty_step_state: 2 -> 6",
        f"mtty-nop2p {dst}: mtty_step_state: 1 -> 4",
        "mtty 11111111-2222-3333-4444-555555555555: mtty_step_state: 2 -> 5",
    ]
    log = KernelLog(str(tmp_path / "no-kmsg"))
    monkeypatch.setattr(log, "drain", lambda: lines)
    assert log.transitions({"source:vfio0": src, "destination:vfio0": dst}) == {
        "source:vfio0": ["RUNNING->PRE_COPY"],
        "destination:vfio0": ["STOP->RESUMING"],
    }


def test_pruning_keeps_a_run_that_is_still_writing(tmp_path: Path) -> None:
    """A long batch's folder (outcomes appended, folder mtime old) survives other checkouts' newer runs."""
    import os

    from harness.vfio.provider import ACTIVE_RUN_S, KEEP_RUNS, _prune_runs

    now = 1_000_000_000.0
    long_run = tmp_path / "long"
    long_run.mkdir()
    (long_run / "outcomes.jsonl").write_text("{}\n")
    os.utime(long_run, (now - 3000, now - 3000))
    os.utime(long_run / "outcomes.jsonl", (now - 10, now - 10))
    for i in range(KEEP_RUNS + 2):
        folder = tmp_path / f"new-{i}"
        folder.mkdir()
        os.utime(folder, (now - 5 + i / 10, now - 5 + i / 10))
    stale = tmp_path / "stale"
    stale.mkdir()
    os.utime(stale, (now - ACTIVE_RUN_S - 1, now - ACTIVE_RUN_S - 1))
    _prune_runs(tmp_path, now=now)
    assert long_run.exists()
    assert not stale.exists()
