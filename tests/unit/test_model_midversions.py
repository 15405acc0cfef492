"""migrate / migrate-incoming arguments, the incoming side and TLS on the profiles between 7.2 and 10.0.

The rules were read in each release's source (8.0.0, 8.1.0, 8.2.0, 9.0.0, 9.1.0 and 9.2's soft freeze:
docs/real-qemu-facts.md, "8.x and 9.x rules: sources"); what depends on a stable point release (8.2's
mandatory ``uri``) stays NotModelled. No real QEMU of these versions runs here: the expectations are the
source's, not measurements.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario, Step, VmSpec
from contract.versions import Version
from reference_impl import predict
from reference_impl.machine_types import machine_error, resolve_machine

HOST = HostFacts(userfaultfd=True)
MAIN = {"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "1"}}
CPR = {"channel-type": "cpr", "addr": MAIN["addr"]}
PRE_CHANNELS = ("8.0", "8.1")
BLK_ERA = ("8.2", "9.0")
POST_BLK = ("9.1", "9.2")
NEED = "need either 'uri' or 'channels' argument"
SEVERAL = "Channel list has more than one entries"
NO_PAUSED = "Cannot resume if there is no paused migration"
INCOMPATIBLE = "Command options are incompatible with current migration capabilities"


def run(*steps: Step, version: str) -> Outcome:
    vm = VmSpec(memory="64M")
    return predict(Scenario("t", source=vm, destination=vm, steps=steps), version, HOST)


def qmp(command: str, side: str = "source", **arguments: Any) -> Step:
    return Step("qmp", side=side, command=command, arguments=arguments)


def refusal(command: str, version: str, side: str = "source", **arguments: Any) -> str | None:
    outcome = run(qmp(command, side, **arguments), version=version)
    assert outcome.verdict != "skipped", outcome.skip_reason
    return outcome.error


def not_modelled(command: str, version: str, side: str = "source", **arguments: Any) -> bool:
    outcome = run(qmp(command, side, **arguments), version=version)
    return outcome.verdict == "skipped" and "not modelled" in (outcome.skip_reason or "")


def same(a: Outcome, b: Outcome) -> bool:
    return (a.verdict, a.error, a.source, a.destination) == (b.verdict, b.error, b.source, b.destination)


@pytest.mark.parametrize("version", PRE_CHANNELS)
def test_8_0_and_8_1_have_the_7_2_schema(version: str) -> None:
    # uri mandatory in both commands; channels and exit-on-error unknown members.
    assert refusal("migrate", version, channels=[MAIN]) == "Parameter 'uri' is missing"
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", channels=[MAIN]) == "Parameter 'channels' is unexpected"
    assert refusal("migrate-incoming", version, "destination") == "Parameter 'uri' is missing"
    incoming = refusal("migrate-incoming", version, "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": True})
    assert incoming == "Parameter 'exit-on-error' is unexpected"


@pytest.mark.parametrize("version", PRE_CHANNELS)
def test_8_0_and_8_1_resume_is_refused_before_the_uri_is_dispatched(version: str) -> None:
    # migrate_prepare's resume check precedes the scheme dispatch, as on 7.2.
    assert refusal("migrate", version, uri="bogus:x", resume=True) == NO_PAUSED
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", resume=True) == NO_PAUSED


def migrate_with(capability: str, version: str, **arguments: Any) -> Outcome:
    """``migrate`` with ``arguments`` after the source's ``capability`` was set."""
    caps = Step("set-capabilities", side="source", capabilities={capability: True})
    return run(caps, qmp("migrate", **arguments), version=version)


@pytest.mark.parametrize("version", PRE_CHANNELS)
def test_8_0_and_8_1_check_the_uri_against_multifd_first(version: str) -> None:
    # migration_channels_and_uri_compatible comes before migrate_prepare (new in 8.0; 7.2 resumes first).
    resumed = migrate_with("multifd", version, uri="exec:cat", resume=True)
    assert resumed.error == "Migration requires multi-channel URIs (e.g. tcp)"
    assert migrate_with("multifd", "7.2", uri="exec:cat", resume=True).error == NO_PAUSED


@pytest.mark.parametrize("version", PRE_CHANNELS + BLK_ERA)
def test_blk_and_inc_follow_migrate_prepare(version: str) -> None:
    plain = run(qmp("migrate", uri="tcp:127.0.0.1:1"), version=version)
    for argument in ("blk", "inc"):
        block = run(qmp("migrate", uri="tcp:127.0.0.1:1", **{argument: True}), version=version)
        assert same(block, plain)
    assert migrate_with("block", version, uri="tcp:127.0.0.1:1", blk=True).error == INCOMPATIBLE
    # Another capability: migrate_caps_check with block added is not modelled.
    assert migrate_with("xbzrle", version, uri="tcp:127.0.0.1:1", blk=True).verdict == "skipped"


@pytest.mark.parametrize("version", ("7.2", *PRE_CHANNELS, *BLK_ERA))
def test_a_running_migration_is_refused_before_blk_is_looked_at(version: str) -> None:
    # migrate_prepare (7.2.22 to 9.0.0): migration_is_running before the blk/inc checks.
    steps = (
        Step("set-capabilities", side="source", capabilities={"block": True}),
        Step("set-parameters", side="source", parameters={"max-bandwidth": 100000}),
        Step("migrate", transport="tcp"),
        qmp("migrate", uri="tcp:127.0.0.1:1", blk=True),
    )
    assert run(*steps, version=version).error == "There's a migration process in progress"


@pytest.mark.parametrize("version", BLK_ERA)
def test_8_2_and_9_0_parse_the_uri_before_blk(version: str) -> None:
    assert migrate_with("block", version, uri="bogus:x", blk=True).error == "unknown migration protocol: bogus:x"
    assert migrate_with("block", "8.1", uri="bogus:x", blk=True).error == INCOMPATIBLE


@pytest.mark.parametrize("version", BLK_ERA)
def test_8_2_and_9_0_know_channels_but_not_exit_on_error(version: str) -> None:
    incoming = refusal("migrate-incoming", version, "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": True})
    assert incoming == "Parameter 'exit-on-error' is unexpected"


def test_8_2_texts_before_the_simplified_conditionals() -> None:
    both = refusal("migrate", "8.2", uri="tcp:127.0.0.1:1", channels=[MAIN])
    assert both == (
        "'uri' and 'channels' arguments are mutually exclusive; exactly one of the two should be present in "
        "'migrate' qmp command "
    )
    # uri with an empty list: the test is has_channels, not the list.
    assert refusal("migrate-incoming", "8.2", "destination", uri="tcp:127.0.0.1:0", channels=[]) == (
        "'uri' and 'channels' arguments are mutually exclusive; exactly one of the two should be present in "
        "'migrate-incoming' qmp command "
    )
    assert refusal("migrate-incoming", "8.2", "destination") == (
        "neither 'uri' or 'channels' argument are specified in 'migrate-incoming' qmp command "
    )
    assert refusal("migrate-incoming", "8.2", "destination", channels=[MAIN, MAIN]) == SEVERAL


def test_8_2_uri_mandatory_depends_on_the_micro_release() -> None:
    # Mandatory in 8.2.0/8.2.1, optional from 8.2.2 (the stable backport): the profile cannot say.
    assert not_modelled("migrate", "8.2")
    assert not_modelled("migrate", "8.2", channels=[MAIN])


@pytest.mark.parametrize("version", ("9.0", *POST_BLK))
def test_9_x_checks_uri_xor_channels_then_counts_them(version: str) -> None:
    assert refusal("migrate", version) == NEED
    assert refusal("migrate", version, channels=[]) == NEED
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", channels=[MAIN]) == NEED
    assert refusal("migrate-incoming", version, "destination") == NEED
    # 8.2-9.2 refuse a second channel whatever its type (10.0 names the type).
    assert refusal("migrate", version, channels=[MAIN, MAIN]) == SEVERAL
    assert refusal("migrate-incoming", version, "destination", channels=[MAIN, MAIN]) == SEVERAL
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", resume=True) == NO_PAUSED
    assert refusal("migrate", version, uri="bogus:x", resume=True) == "unknown migration protocol: bogus:x"
    # A main channel is its URI; uri with an empty list is the URI alone.
    by_uri = run(qmp("migrate", uri="tcp:127.0.0.1:1"), version=version)
    assert same(run(qmp("migrate", channels=[MAIN]), version=version), by_uri)
    assert same(run(qmp("migrate", uri="tcp:127.0.0.1:1", channels=[]), version=version), by_uri)


@pytest.mark.parametrize("version", ("9.0", *POST_BLK))
def test_no_cpr_channel_type_before_10_0(version: str) -> None:
    # MigrationChannelType is 'main' alone: the QAPI visitor refuses the value, naming the member only.
    cpr = "Parameter 'channel-type' does not accept value 'cpr'"
    assert refusal("migrate", version, channels=[CPR]) == cpr
    assert refusal("migrate", version, channels=[MAIN, CPR]) == cpr
    assert refusal("migrate-incoming", version, "destination", channels=[CPR]) == cpr
    assert not_modelled("migrate", "10.0", channels=[MAIN, CPR])  # 10.0 has the type: a cpr-transfer migration


@pytest.mark.parametrize("version", POST_BLK)
def test_9_1_removed_blk_and_inc_and_added_exit_on_error(version: str) -> None:
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", blk=True) == "Parameter 'blk' is unexpected"
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", inc=False) == "Parameter 'inc' is unexpected"
    incoming = run(
        qmp("migrate-incoming", "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": True}), version=version
    )
    plain = run(qmp("migrate-incoming", "destination", uri="tcp:127.0.0.1:0"), version=version)
    assert same(incoming, plain)
    assert not_modelled("migrate-incoming", version, "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": False})


@pytest.mark.parametrize("version", PRE_CHANNELS + BLK_ERA + POST_BLK)
def test_resume_false_is_the_default(version: str) -> None:
    with_false = run(qmp("migrate", uri="tcp:127.0.0.1:1", resume=False), version=version)
    plain = run(qmp("migrate", uri="tcp:127.0.0.1:1"), version=version)
    assert same(with_false, plain)


@pytest.mark.parametrize("version", PRE_CHANNELS)
def test_8_0_and_8_1_incoming_unknown_scheme_as_7_2(version: str) -> None:
    # No file: transport before 8.2; the setup event is sent before the dispatch, the status stays none.
    for uri in ("bogus:x", "file:/nonexistent-migconform/x"):
        outcome = run(qmp("migrate-incoming", "destination", uri=uri), version=version)
        assert outcome.error == f"unknown migration protocol: {uri}"
        assert outcome.destination is not None and outcome.destination.status == "none"
        assert outcome.events is not None and outcome.events["destination"] == ["setup"]


def test_8_1_leaves_the_incoming_status_none_until_the_stream_comes() -> None:
    # The incoming state moves to setup in qemu_start_incoming_migration from 8.2 (commit 4111a732e8).
    states = {}
    for version in ("8.1", "8.2"):
        outcome = run(qmp("migrate-incoming", "destination", uri="tcp:127.0.0.1:0"), version=version)
        assert outcome.destination is not None and outcome.events is not None
        states[version] = (outcome.destination.status, outcome.events["destination"])
    assert states == {"8.1": ("none", ["setup"]), "8.2": ("setup", [])}


@pytest.mark.parametrize(("version", "incoming", "outgoing"), [
    ("8.2", "Unable to open /nonexistent-migconform/x", "Unable to open /nonexistent-migconform/x"),
    ("9.0", "Unable to open /nonexistent-migconform/x", "Unable to open /nonexistent-migconform/x"),
    ("9.1", "Could not open '/nonexistent-migconform/x'", "Could not create '/nonexistent-migconform/x'"),
])  # fmt: skip
def test_file_open_errors_changed_in_9_1(version: str, incoming: str, outgoing: str) -> None:
    uri = "file:/nonexistent-migconform/x"
    error = refusal("migrate-incoming", version, "destination", uri=uri)
    assert error == f"{incoming}: No such file or directory"
    assert refusal("migrate", version, uri=uri) == f"{outgoing}: No such file or directory"


@pytest.mark.parametrize("version", PRE_CHANNELS + BLK_ERA + POST_BLK)
def test_a_destination_refusing_its_tls_channel_keeps_listening_before_10_0(version: str) -> None:
    steps = (
        Step("set-parameters", side="both", parameters={"tls-creds": "nosuch"}),
        Step("migrate", transport="tcp"),
        Step("wait"),
    )
    outcome = run(*steps, version=version)
    assert (outcome.verdict, outcome.error) == ("failed", "No TLS credentials with id 'nosuch'")
    assert outcome.destination is not None and outcome.destination.runstate == "inmigrate"
    assert run(*steps, version="10.0").destination is None  # 10.0: migration_channel_process_incoming exits


def set_parameter(version: str, **parameters: Any) -> str | None:
    return run(Step("set-parameters", side="source", parameters=parameters), version=version).error


@pytest.mark.parametrize("version", ("7.2", "8.0", "8.1", "8.2", "9.0", "10.0"))
def test_multifd_levels_are_checked_from_9_0(version: str) -> None:
    # migrate_params_test_apply copies the two levels from 9.0 (commit b4014a2bf5); before, the check reads the
    # current value and passes.
    checked = version in ("9.0", "10.0")
    zlib = "Parameter 'multifd_zlib_level' expects a value between 0 and 9"
    zstd = "Parameter 'multifd_zstd_level' expects a value between 0 and 20"
    assert set_parameter(version, **{"multifd-zlib-level": 10}) == (zlib if checked else None)
    assert set_parameter(version, **{"multifd-zstd-level": 21}) == (zstd if checked else None)


@pytest.mark.parametrize(
    ("version", "error"),
    [
        ("8.1", "Parameter 'vcpu_dirty_limit' expects is invalid, it must greater then 1 MB/s"),
        ("9.0", "Parameter 'vcpu_dirty_limit' expects is invalid, it must greater then 1 MB/s"),
        ("9.1", "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"),
    ],
)
def test_vcpu_dirty_limit_text_changed_in_9_1(version: str, error: str) -> None:
    assert set_parameter(version, **{"vcpu-dirty-limit": 0}) == error


@pytest.mark.parametrize(("version", "text"), [("8.1", "state"), ("8.2", "or postcopy-recover state")])
def test_migrate_pause_text_names_recover_from_8_2(version: str, text: str) -> None:
    error = refusal("migrate-pause", version)
    assert error == f"migrate-pause is currently only supported during postcopy-active {text}"


@pytest.mark.parametrize(("version", "runstate"), [("8.1", "postmigrate"), ("8.2", "paused"), ("9.2", "paused")])
def test_a_cancelled_stopped_source_gets_its_old_runstate_from_8_2(version: str, runstate: str) -> None:
    # migration_iteration_finish: 7.2-8.1 postmigrate, 8.2+ s->vm_old_state (the VM was stopped before migrate).
    steps = (
        Step("stop"),
        Step("set-capabilities", side="source", capabilities={"pause-before-switchover": True}),
        Step("migrate", transport="tcp"),
        Step("wait"),
        qmp("migrate_cancel"),
        Step("wait"),
    )
    source = run(*steps, version=version).source
    assert source is not None and (source.status, source.runstate) == ("cancelled", runstate)


@pytest.mark.parametrize(
    ("version", "gone"),
    [("8.1", None), ("8.2", "pc-i440fx-1.7"), ("9.0", "pc-i440fx-1.7"), ("9.1", "pc-i440fx-2.3")],
)
def test_machine_types_and_their_refusal_per_release(version: str, gone: str | None) -> None:
    # hw/i386/pc_piix.c / pc_q35.c of each release; select_machine's text names the type from 9.1.
    profile = Version.parse(version)
    if gone is not None:
        assert resolve_machine(gone, profile) is None
    assert resolve_machine("pc-i440fx-2.4", profile) == "pc-i440fx-2.4"
    assert resolve_machine("pc-q35-2.4", profile) == "pc-q35-2.4"
    named = 'unsupported machine type: "pc-q35-10.0"'
    plain = "unsupported machine type"
    expected = named if profile >= Version(9, 1) else plain
    assert machine_error(VmSpec(machine="pc-q35-10.0"), profile) == expected
