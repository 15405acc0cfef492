"""The ``[guest]`` table, the model's guest prediction and the comparison of ``Outcome.guest`` (pure logic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from contract.guest import GuestSpec
from contract.guest_rules import checked_side, effective_guest
from contract.outcome import Outcome, VmState
from contract.scenario import Scenario, VmSpec
from harness.binaries import QemuBinary
from harness.compare import compare
from harness.execution.guest import guest_dict
from harness.execution.preflight import guest_accel
from harness.guest.session import GuestReport
from harness.guest.session import GuestSpec as SessionGuestSpec
from harness.loader import load_scenario
from harness.probe import BinaryProbe, HostProbe, LinuxBootProbe
from harness.scenario_error import ScenarioError
from reference_impl.guest import predict_guest


def load(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "g.toml"
    path.write_text(text)
    return load_scenario(path)


def error_of(tmp_path: Path, text: str) -> ScenarioError:
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    return info.value


def test_guest_table_and_requires_guest_both_mean_a_guest_runs(tmp_path: Path) -> None:
    s = load(tmp_path, '[vm]\nmemory = "128M"\n[guest]\nmemory = "16M"\ndirty-rate = 500\n[migration]\n')
    assert s.guest == GuestSpec(memory="16M", dirty_rate=500)
    assert effective_guest(s) == s.guest
    bare = load(tmp_path, 'requires = ["guest"]\n[migration]\n')
    # The default VM (256M) fits the default workload; a 64M VM gets a workload that fits next to the kernel.
    assert bare.guest is None and effective_guest(bare) == GuestSpec()
    small = load(tmp_path, 'requires = ["guest"]\n[vm]\nmemory = "64M"\n[migration]\n')
    assert effective_guest(small) == GuestSpec(memory="24M")
    assert effective_guest(load(tmp_path, "[migration]\n")) is None
    assert SessionGuestSpec is GuestSpec, "harness.guest.session must use the model's plain-data spec"


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[guest]\nspeed = 1\n", "guest.speed", ("memory", "dirty-rate", "image")),
        ('[guest]\nimage = "alpine"\n', "guest.image", ("default",)),
        ("[guest]\ndirty-rate = -1\n", "guest.dirty-rate", None),
        ('[guest]\ndirty-rate = "fast"\n', "guest.dirty-rate", None),
        ('[guest]\nmemory = "lots"\n', "guest.memory", None),
        ('[vm]\nmemory = "64M"\n[guest]\nmemory = "32M"\n', "guest.memory", None),
        ("guest = 1\n", "guest", None),
    ],
)
def test_guest_table_errors_name_the_key(tmp_path: Path, text: str, key: str, allowed: tuple[str, ...] | None) -> None:
    error = error_of(tmp_path, text)
    assert error.key == key, str(error)
    assert error.allowed == allowed


def test_workload_that_does_not_fit_names_where_the_vm_size_came_from(tmp_path: Path) -> None:
    error = error_of(tmp_path, '[destination]\nmemory = "64M"\n[guest]\nmemory = "32M"\n')
    assert "destination.memory" in str(error) and "'64M'" in str(error)


def _outcome(verdict: str, source: VmState | None, destination: VmState | None, stage: str | None = None) -> Outcome:
    return Outcome("s", "reference", "10.0.2", verdict, stage=stage, source=source, destination=destination)


def test_model_checks_the_destination_after_a_completed_migration_else_the_source() -> None:
    guest = Scenario("s", guest=GuestSpec())
    done = _outcome("completed", VmState("completed", "postmigrate"), VmState("completed", "running"))
    assert checked_side(done) == "destination"
    assert predict_guest(guest, done) == {"alive": True, "bad_pages": 0}
    cancelled = _outcome("completed", VmState("cancelled", "running"), VmState("none", "inmigrate"))
    assert checked_side(cancelled) == "source"
    assert predict_guest(guest, cancelled) == {"alive": True, "bad_pages": 0}
    refused = _outcome("refused", VmState("none", "running"), VmState("none", "inmigrate"), stage="migrate")
    assert predict_guest(guest, refused) == {"alive": True, "bad_pages": 0}
    # A completed source whose destination died (e.g. a failed load): the guest is gone.
    lost = _outcome("failed", VmState("completed", "postmigrate"), None, stage="migration")
    assert predict_guest(guest, lost) == {"alive": False, "bad_pages": 0}
    startup = _outcome("refused", None, None, stage="startup")
    assert predict_guest(guest, startup) is None
    assert predict_guest(Scenario("s"), done) is None


def test_comparison_of_guest_ignores_the_informative_keys() -> None:
    model = _outcome("completed", None, None)
    model.guest = {"alive": True, "bad_pages": 0}
    qemu = _outcome("completed", None, None)
    qemu.backend = "qemu"
    qemu.guest = guest_dict(GuestReport(alive=True, pages_checked=4096, bad_pages=0))
    assert compare(model, qemu).agree
    qemu.guest = guest_dict(GuestReport(alive=True, pages_checked=4096, bad_pages=1, first_bad=2055))
    assert qemu.guest == {"alive": True, "pages_checked": 4096, "bad_pages": 1, "first_bad": 2055}
    result = compare(model, qemu)
    assert list(result.differences) == ["guest"]
    assert result.differences["guest"] == [model.guest, qemu.guest]
    qemu.guest = guest_dict(GuestReport(alive=False, detail="console closed"))
    assert compare(model, qemu).differences["guest"][1]["alive"] is False


def _probes(kvm_usable: bool, pvm: bool) -> tuple[BinaryProbe, HostProbe]:
    from unittest.mock import Mock

    probe = Mock(spec=BinaryProbe)
    probe.binary = Mock(spec=QemuBinary)
    probe.kvm = Mock(usable=kvm_usable, cpu="host,-arch-capabilities" if kvm_usable else None)
    host = Mock(spec=HostProbe)
    host.pvm = pvm
    return probe, host


def _linux(boots: bool | None) -> Callable[[QemuBinary], LinuxBootProbe]:
    return lambda binary: LinuxBootProbe(boots, "fake")


def test_guest_accelerator_is_kvm_only_where_the_boot_probe_booted_linux() -> None:
    """The boot probe's answer decides, not the host's kind: a PVM host whose KVM boots Linux gets KVM, and an
    unprobed answer (no guest image) is not a yes."""
    auto = VmSpec()
    assert guest_accel(auto, *_probes(True, True), _linux(True)) == ("kvm", "host,-arch-capabilities")
    assert guest_accel(auto, *_probes(True, False), _linux(True)) == ("kvm", "host,-arch-capabilities")
    assert guest_accel(auto, *_probes(True, False), _linux(False)) == ("tcg", "max")
    assert guest_accel(auto, *_probes(True, False), _linux(None)) == ("tcg", "max")
    assert guest_accel(auto, *_probes(False, False), _linux(True)) == ("tcg", "max")
    assert guest_accel(VmSpec(accel="tcg"), *_probes(True, False), _linux(True)) == ("tcg", None)
