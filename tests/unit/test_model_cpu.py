"""The vCPU's invtsc blocker under KVM (reference_impl.cpu), the probe's verdict on it and the "host" mapping.

The expected texts are real QEMU's (7.2.22, 10.0.2 and 10.2.2 under this project's KVM, docs/real-qemu-facts.md
"CPU blockers under KVM"); the rules are kvm_arch_init_vcpu, x86_cpu_parse_featurestr, x86_cpu_expand_features
and x86_cpu_filter_features as reference_impl/cpu.py names them. No test here asks this host anything.
"""

from __future__ import annotations

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import MigrationSpec, Scenario, VmSpec
from contract.versions import Version
from harness.binaries import QemuBinary
from harness.execution.preflight import unmet_requirement, vm_args
from harness.probe import BinaryProbe, HostProbe, KvmProbe, invtsc_verdict, kvm_cpu_with
from reference_impl import predict
from reference_impl.cpu import INVTSC_BLOCKER, INVTSC_ONLY_MIGRATABLE_ERROR, cpu_blocker
from reference_impl.limits import NotModelled

KVM_INVTSC = HostFacts(kvm=True, kvm_invtsc=True)
VERSIONS = ("7.2", "10.0", "10.2")


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        ("host,+invtsc", INVTSC_BLOCKER),
        ("host,invtsc", INVTSC_BLOCKER),  # a bare name means name=on
        ("host,invtsc=on", INVTSC_BLOCKER),
        ("qemu64,+invtsc", INVTSC_BLOCKER),  # any model: the flag is asked for by name
        ("host,migratable=off", INVTSC_BLOCKER),  # max_features takes what KVM reports, unfiltered
        ("host,-migratable", INVTSC_BLOCKER),  # "-f" sets the property false too
        ("max,migratable=no", INVTSC_BLOCKER),
        ("host", None),  # migratable on: x86_cpu_get_migratable_flags leaves invtsc out
        ("host,-arch-capabilities", None),
        ("host,migratable=off,-invtsc", None),
        ("host,+invtsc,-invtsc", None),  # minus_features are applied after plus_features
        ("host,invtsc=off,+invtsc", INVTSC_BLOCKER),  # "+f" beats "f=off" (applied after the globals)
        ("host,+invtsc,invtsc=off", INVTSC_BLOCKER),
        ("host,invtsc=off", None),
    ],
)
def test_kvm_vcpu_with_invtsc_gets_the_blocker(cpu: str, expected: str | None) -> None:
    assert cpu_blocker(cpu, kvm=True, kvm_invtsc=True) == expected


@pytest.mark.parametrize("cpu", ["host,+invtsc", "host,migratable=off", "qemu64,invtsc=on"])
def test_no_blocker_where_the_flag_is_dropped(cpu: str) -> None:
    # x86_cpu_filter_features drops what KVM does not report (or TCG does not support), with a warning.
    assert cpu_blocker(cpu, kvm=True, kvm_invtsc=False) is None
    assert cpu_blocker(cpu, kvm=False, kvm_invtsc=True) is None


def test_no_cpu_string_is_the_executors_default_model() -> None:
    assert cpu_blocker(None, kvm=True, kvm_invtsc=True) is None


@pytest.mark.parametrize(
    ("cpu", "kvm", "kvm_invtsc", "what"),
    [
        ("host,+invtsc,tsc-frequency=2000000000", True, True, "tsc-frequency"),
        ("host,tsc_freq=2G", True, True, "tsc-freq"),
        ("host,hv-passthrough", True, True, "hv-passthrough"),
        ("host,hv_no_nonarch_coresharing=auto", True, True, "hv-no-nonarch-coresharing"),
        ("YongFeng", True, True, "YongFeng"),
        ("qemu64,migratable=off", True, True, "migratable"),
        ("host,invtsc=maybe", True, True, "invtsc=maybe"),
        ("host,+invtsc,enforce", True, False, "enforce"),
        ("max,+invtsc,enforce", False, False, "TCG"),
    ],
)
def test_what_the_rule_cannot_say_is_not_modelled(cpu: str, kvm: bool, kvm_invtsc: bool, what: str) -> None:
    with pytest.raises(NotModelled, match=what):
        cpu_blocker(cpu, kvm=kvm, kvm_invtsc=kvm_invtsc)


def test_enforce_without_invtsc_asked_stays_modelled() -> None:
    # migratable=off only takes what KVM reports: enforce has nothing of invtsc to refuse.
    assert cpu_blocker("host,migratable=off,enforce", kvm=True, kvm_invtsc=False) is None


def _predict(source: VmSpec, version: str = "10.0", host: HostFacts = KVM_INVTSC) -> Outcome:
    scenario = Scenario("t", source=source, destination=VmSpec(accel=source.accel), migration=MigrationSpec())
    return predict(scenario, version, host)


@pytest.mark.parametrize("version", VERSIONS)
def test_migrate_is_refused_with_the_invtsc_text(version: str) -> None:
    outcome = _predict(VmSpec(accel="kvm", cpu="host,+invtsc"), version)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "migrate", INVTSC_BLOCKER)


@pytest.mark.parametrize("version", VERSIONS)
def test_only_migratable_ends_the_start_in_kvm_init_vcpu(version: str) -> None:
    outcome = _predict(VmSpec(accel="kvm", cpu="host,+invtsc", only_migratable=True), version)
    assert (outcome.verdict, outcome.stage) == ("refused", "startup")
    assert outcome.error is not None and outcome.error.endswith(INVTSC_ONLY_MIGRATABLE_ERROR)


def test_plain_host_migrates_and_tcg_ignores_invtsc() -> None:
    assert _predict(VmSpec(accel="kvm", cpu="host")).verdict == "completed"
    assert _predict(VmSpec(accel="tcg", cpu="max,+invtsc")).verdict == "completed"
    assert _predict(VmSpec(cpu="host,+invtsc"), host=HostFacts(kvm=False, kvm_invtsc=True)).verdict == "completed"


def test_the_args_last_cpu_wins_over_the_vm_key() -> None:
    # vm_args puts [vm] cpu before the args; QEMU keeps the last -cpu.
    spec = VmSpec(accel="kvm", cpu="host,+invtsc", args=("-cpu", "host"))
    assert _predict(spec).verdict == "completed"
    spec = VmSpec(accel="kvm", args=("-cpu", "host,+invtsc"))
    assert _predict(spec).error == INVTSC_BLOCKER


def test_the_vcpu_blocker_comes_after_drives_and_before_devices() -> None:
    # migration_is_blocked reports the newest blocker: a -device's is newer than the vCPU's, a drive's older.
    vvfat = ("-blockdev", "driver=vvfat,node-name=vv0,dir=/media,rw=on")
    ivshmem = ("-object", "memory-backend-ram,id=hb,size=1M,share=on", "-device", "ivshmem-plain,memdev=hb")
    assert "vvfat" in str(_predict(VmSpec(accel="kvm", args=vvfat)).error)
    assert _predict(VmSpec(accel="kvm", cpu="host,+invtsc", args=vvfat)).error == INVTSC_BLOCKER
    peer_mode = "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"
    assert _predict(VmSpec(accel="kvm", cpu="host,+invtsc", args=ivshmem)).error == peer_mode


# ------------------------------------------------------------------------------------------ harness side


def test_probe_verdict_reads_the_enforce_run() -> None:
    kept, detail = invtsc_verdict("host,+invtsc,enforce", "ok")
    assert kept and "host,+invtsc,enforce" in detail
    refusal = "warning: host doesn't support requested feature: CPUID.80000007H:EDX.invtsc [bit 8]"
    kept, detail = invtsc_verdict("host,+invtsc,enforce", refusal)
    assert not kept and refusal in detail


@pytest.mark.parametrize(
    ("scenario_cpu", "probed", "expected"),
    [
        ("host,+invtsc", "host,-arch-capabilities", "host,-arch-capabilities,+invtsc"),
        ("host", "host,-arch-capabilities", "host,-arch-capabilities"),
        ("host,+invtsc", "host", "host,+invtsc"),
        ("host,+invtsc", None, "host,+invtsc"),
        ("max,+invtsc", "host,-arch-capabilities", "max,+invtsc"),
        ("hostile", "host,-arch-capabilities", "hostile"),
    ],
)
def test_host_model_becomes_the_probed_kvm_model(scenario_cpu: str, probed: str | None, expected: str) -> None:
    assert kvm_cpu_with(scenario_cpu, probed) == expected


def test_vm_args_maps_host_only_under_kvm() -> None:
    spec = VmSpec(cpu="host,+invtsc")
    kvm = vm_args(spec, "kvm", "host,-arch-capabilities")
    assert kvm[kvm.index("-cpu") + 1] == "host,-arch-capabilities,+invtsc"
    tcg = vm_args(spec, "tcg", None)
    assert tcg[tcg.index("-cpu") + 1] == "host,+invtsc"


def _probe(kvm: KvmProbe) -> BinaryProbe:
    binary = QemuBinary("/nonexistent/qemu", Version.parse("10.0.2"), "10.0.2")
    return BinaryProbe(binary, (), frozenset(), (), kvm)


HOST = HostProbe("6.12", True, "", True, True, True, "", True, "", False)


def test_requires_kvm_invtsc_skips_with_the_probes_reason() -> None:
    scenario = Scenario("t", requires=("kvm", "kvm-invtsc"))
    kept = KvmProbe(True, "host", "runs", (), True, "KVM keeps invtsc")
    assert unmet_requirement(scenario, _probe(kept), HOST, None) is None
    dropped = KvmProbe(True, "host", "runs", (), False, "KVM does not keep invtsc: -cpu host,+invtsc,enforce: no")
    why = unmet_requirement(Scenario("t", requires=("kvm-invtsc",)), _probe(dropped), HOST, None)
    assert why == "requires KVM keeping invtsc: KVM does not keep invtsc: -cpu host,+invtsc,enforce: no"
    no_kvm = KvmProbe(False, None, "no /dev/kvm")
    why = unmet_requirement(Scenario("t", requires=("kvm-invtsc",)), _probe(no_kvm), HOST, None)
    assert why is not None and why.startswith("requires KVM keeping invtsc: not probed")


@pytest.mark.parametrize(
    "cpu", ["host,hv-passthrough", "host,hv-relaxed,hv-no-nonarch-coresharing=auto", "host,+hv-passthrough"]
)
def test_hyperv_flags_add_nothing_on_a_kvm_without_hyperv(cpu: str) -> None:
    # hyperv_enabled() asks KVM_CAP_HYPERV first: hyperv_init_vcpu never runs (measured on this PVM host).
    assert cpu_blocker(cpu, kvm=True, kvm_invtsc=True, kvm_hyperv=False) is None
    assert cpu_blocker(f"{cpu},+invtsc", kvm=True, kvm_invtsc=True, kvm_hyperv=False) == INVTSC_BLOCKER
    with pytest.raises(NotModelled, match="with Hyper-V"):
        cpu_blocker(cpu, kvm=True, kvm_invtsc=True, kvm_hyperv=True)
    with pytest.raises(NotModelled, match="not probed"):
        cpu_blocker(cpu, kvm=True, kvm_invtsc=True, kvm_hyperv=None)


def test_hyperv_flag_values_the_parser_refuses_are_not_modelled() -> None:
    with pytest.raises(NotModelled, match="hv-no-nonarch-coresharing=maybe"):
        cpu_blocker("host,hv-no-nonarch-coresharing=maybe", kvm=True, kvm_invtsc=False, kvm_hyperv=False)
    with pytest.raises(NotModelled, match="hv-passthrough=2"):
        cpu_blocker("host,hv-passthrough=2", kvm=True, kvm_invtsc=False, kvm_hyperv=False)


def test_requires_kvm_no_hyperv_reads_the_host_probe() -> None:
    scenario = Scenario("t", requires=("kvm", "kvm-no-hyperv"))
    probe = _probe(KvmProbe(True, "host", "runs"))
    without = HostProbe("6.12", True, "", True, True, True, "", True, "", False, False, "KVM_CAP_HYPERV = 0")
    assert unmet_requirement(scenario, probe, without, None) is None
    with_hyperv = HostProbe("6.12", True, "", True, True, True, "", True, "", False, True, "KVM_CAP_HYPERV = 1")
    assert unmet_requirement(scenario, probe, with_hyperv, None) == "requires a KVM without Hyper-V: KVM_CAP_HYPERV = 1"
    unprobed = unmet_requirement(scenario, probe, HOST, None)
    assert unprobed == "requires a KVM without Hyper-V: not probed: no usable /dev/kvm"
