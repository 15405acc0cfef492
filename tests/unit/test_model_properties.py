"""Property tests of the model: refusals change nothing, accepted sets hold no forbidden pair, predict is
a pure function. The forbidden pairs are migrate_caps_check's rules (docs/real-qemu-facts.md caps-rules) as confirmed on
real QEMU (docs/real-qemu-facts.md#caps-check)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.host import HostFacts
from contract.scenario import DeviceSpec, MigrationSpec, Scenario, Step, VmSpec
from contract.versions import PROFILES, V8_1, V8_2, V10_1, Version
from reference_impl import predict
from reference_impl.machine import Machine, realize
from reference_impl.migration import set_capabilities

CAPS = ("xbzrle", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram", "x-colo", "release-ram",
        "return-path", "multifd", "dirty-bitmaps", "x-ignore-shared", "validate-uuid", "background-snapshot",
        "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit", "mapped-ram")
BG_CONFLICTS = ("postcopy-ram", "dirty-bitmaps", "return-path", "multifd", "auto-converge", "release-ram",
                "compress", "xbzrle", "x-colo", "validate-uuid", "zero-copy-send")

requests = st.dictionaries(st.sampled_from(CAPS), st.booleans(), min_size=1, max_size=4)
versions = st.sampled_from(PROFILES)
hosts = st.builds(HostFacts, userfaultfd=st.booleans(), uffd_wp=st.booleans(), kvm=st.booleans(),
                  dirty_ring=st.booleans())


def forbidden(version: Version, caps: frozenset[str]) -> list[str]:
    """Pairs QEMU never lets coexist (caps-rules d, e, h, k, n, p, s, u)."""
    found = []
    if {"postcopy-ram", "x-ignore-shared"} <= caps:
        found.append("d")
    if V8_1 <= version < V10_1 and {"postcopy-ram", "multifd"} <= caps:
        found.append("e")
    if "background-snapshot" in caps and caps.intersection(BG_CONFLICTS):
        found.append("h")
    if "postcopy-preempt" in caps and "postcopy-ram" not in caps:
        found.append("k")
    if {"multifd", "compress"} <= caps:
        found.append("n")
    if "switchover-ack" in caps and "return-path" not in caps:
        found.append("p")
    if version >= V8_2 and {"multifd", "xbzrle"} <= caps:
        found.append("s")
    if "mapped-ram" in caps and caps.intersection({"xbzrle", "postcopy-ram"}):
        found.append("u")
    if "zero-copy-send" in caps and "multifd" not in caps:
        found.append("i")
    return found


def machine(version: Version, host: HostFacts, role: str) -> Machine:
    vm = realize(VmSpec(), version, host, role)
    assert isinstance(vm, Machine)
    return vm


@settings(max_examples=80, deadline=None)
@given(version=versions, host=hosts, sequence=st.lists(requests, min_size=1, max_size=6),
       role=st.sampled_from(("source", "destination")))
def test_refusal_changes_nothing_and_accepted_sets_are_clean(
    version: Version, host: HostFacts, sequence: list[dict[str, bool]], role: str
) -> None:
    vm = machine(version, host, role)
    for request in sequence:
        before = vm.caps
        error = set_capabilities(vm, request)
        if error is not None:
            assert vm.caps == before  # later steps see the old set
        assert forbidden(version, vm.caps) == []


@settings(max_examples=40, deadline=None)
@given(version=versions, host=hosts, first=requests, second=requests)
def test_refused_step_is_invisible_to_later_steps(
    version: Version, host: HostFacts, first: dict[str, bool], second: dict[str, bool]
) -> None:
    """A refused set-capabilities ends the scenario; its outcome equals that of the scenario that stops just
    before it, except for verdict/stage/error (nothing the refused command did is visible)."""
    with_refusal = predict(Scenario("p", steps=(Step("set-capabilities", capabilities=first),
                                                Step("set-capabilities", capabilities=second))), version, host)
    without = predict(Scenario("p", steps=(Step("set-capabilities", capabilities=first),)), version, host)
    if with_refusal.verdict == "refused" and without.verdict == "completed":
        assert with_refusal.source == without.source
        assert with_refusal.destination == without.destination


scenarios = st.builds(
    Scenario,
    id=st.just("p"),
    source=st.builds(VmSpec, args=st.sampled_from([(), ("-device", "nvme,serial=x"), ("-S",),
                                                   ("-device", "qemu-xhci", "-device", "usb-tablet")]),
                     only_migratable=st.booleans(),
                     devices=st.sampled_from([(), (DeviceSpec("virtio-net-pci", id="n0"),)])),
    migration=st.builds(MigrationSpec, capabilities=requests,
                        transport=st.sampled_from(("tcp", "unix", "file", "exec")),
                        mode=st.sampled_from(("precopy", "postcopy", "background-snapshot"))),
)


@settings(max_examples=50, deadline=None)
@given(scenario=scenarios, version=versions, host=hosts)
def test_predict_is_deterministic(scenario: Scenario, version: Version, host: HostFacts) -> None:
    first = predict(scenario, version, host).to_json()
    assert predict(scenario, version, host).to_json() == first
    # an equal but distinct Scenario object (no cache hit) gives the same answer
    src = scenario.source
    clone_source = VmSpec(args=src.args, only_migratable=src.only_migratable, devices=src.devices)
    clone = Scenario(scenario.id, source=clone_source, migration=scenario.migration)
    assert predict(clone, version, host).to_json() == first
    # a verdict, or the model saying what it does not follow (e.g. a device it has no rule for on a profile)
    assert first["verdict"] in ("completed", "refused", "failed") or first.get("not_modelled")
