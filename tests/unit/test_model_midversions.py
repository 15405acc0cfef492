"""migrate / migrate-incoming arguments on the profiles between 7.2 and 10.0 (reference_impl.qmp_migrate_args).

The QAPI layer is modelled there (each version's schema), and on 9.1/9.2 the handler checks whose text is the
same in the 9.1 development tree and in 10.0.2 (docs/real-qemu-facts.md, "8.x and 9.x rules: sources"); what
reaches a handler that was not read for that version stays NotModelled. No real QEMU of these
versions runs here: the expectations are the source's, not measurements.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario, Step, VmSpec
from reference_impl import predict

HOST = HostFacts(userfaultfd=True)
MAIN = {"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "1"}}
PRE_CHANNELS = ("8.0", "8.1")
BLK_ERA = ("8.2", "9.0")
POST_BLK = ("9.1", "9.2")


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


@pytest.mark.parametrize("version", PRE_CHANNELS)
def test_8_0_and_8_1_have_the_7_2_schema(version: str) -> None:
    # uri mandatory in both commands; channels and exit-on-error unknown members.
    assert refusal("migrate", version, channels=[MAIN]) == "Parameter 'uri' is missing"
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", channels=[MAIN]) == "Parameter 'channels' is unexpected"
    assert refusal("migrate-incoming", version, "destination") == "Parameter 'uri' is missing"
    incoming = refusal("migrate-incoming", version, "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": True})
    assert incoming == "Parameter 'exit-on-error' is unexpected"


@pytest.mark.parametrize("version", BLK_ERA)
def test_8_2_and_9_0_know_channels_but_not_exit_on_error(version: str) -> None:
    incoming = refusal("migrate-incoming", version, "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": True})
    assert incoming == "Parameter 'exit-on-error' is unexpected"
    # channels and blk/inc are members: their handlers were not read.
    assert not_modelled("migrate", version, uri="tcp:127.0.0.1:1", channels=[MAIN])
    assert not_modelled("migrate", version, uri="tcp:127.0.0.1:1", blk=True)
    assert not_modelled("migrate-incoming", version, "destination", channels=[MAIN])


def test_8_2_uri_mandatory_depends_on_the_micro_release() -> None:
    # Mandatory in 8.2.0/8.2.1, optional from 8.2.2 (the stable backport): the profile cannot say.
    assert not_modelled("migrate", "8.2")
    assert not_modelled("migrate", "9.0")  # optional from 9.0: the handler's message was not read


@pytest.mark.parametrize("version", POST_BLK)
def test_9_1_removed_blk_and_inc_and_added_exit_on_error(version: str) -> None:
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", blk=True) == "Parameter 'blk' is unexpected"
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", inc=False) == "Parameter 'inc' is unexpected"
    incoming = run(
        qmp("migrate-incoming", "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": True}), version=version
    )
    plain = run(qmp("migrate-incoming", "destination", uri="tcp:127.0.0.1:0"), version=version)
    assert (incoming.verdict, incoming.error, incoming.destination) == (plain.verdict, plain.error, plain.destination)
    assert not_modelled("migrate-incoming", version, "destination", uri="tcp:127.0.0.1:0", **{"exit-on-error": False})


@pytest.mark.parametrize("version", PRE_CHANNELS + BLK_ERA + POST_BLK)
def test_resume_false_is_the_default(version: str) -> None:
    with_false = run(qmp("migrate", uri="tcp:127.0.0.1:1", resume=False), version=version)
    plain = run(qmp("migrate", uri="tcp:127.0.0.1:1"), version=version)
    assert (with_false.verdict, with_false.error, with_false.source) == (plain.verdict, plain.error, plain.source)
    if version not in POST_BLK:  # 9.1+: test_9_1_runs_the_checks_10_0_2_shares_with_the_9_1_tree
        assert not_modelled("migrate", version, uri="tcp:127.0.0.1:1", resume=True)


@pytest.mark.parametrize("version", PRE_CHANNELS)
def test_blk_and_inc_reach_an_unread_migrate_prepare(version: str) -> None:
    assert not_modelled("migrate", version, uri="tcp:127.0.0.1:1", blk=True)
    assert not_modelled("migrate", version, uri="tcp:127.0.0.1:1", inc=True)


@pytest.mark.parametrize("version", POST_BLK)
def test_9_1_runs_the_checks_10_0_2_shares_with_the_9_1_tree(version: str) -> None:
    need = "need either 'uri' or 'channels' argument"
    assert refusal("migrate", version) == need
    assert refusal("migrate", version, channels=[]) == need
    assert refusal("migrate", version, uri="tcp:127.0.0.1:1", channels=[MAIN]) == need
    assert refusal("migrate-incoming", version, "destination") == need
    resumed = refusal("migrate", version, uri="tcp:127.0.0.1:1", resume=True)
    assert resumed == "Cannot resume if there is no paused migration"
    assert refusal("migrate", version, uri="bogus:x", resume=True) == "unknown migration protocol: bogus:x"
    # A main channel is its URI.
    by_channel = run(qmp("migrate", channels=[MAIN]), version=version)
    by_uri = run(qmp("migrate", uri="tcp:127.0.0.1:1"), version=version)
    assert (by_channel.verdict, by_channel.error, by_channel.source) == (by_uri.verdict, by_uri.error, by_uri.source)
    # Several channels: the message changed between the 9.1 tree and 10.0.2.
    assert not_modelled("migrate", version, channels=[MAIN, MAIN])
    assert not_modelled("migrate-incoming", version, "destination", channels=[MAIN, MAIN])
