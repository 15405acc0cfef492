"""Model fix found by hidden-author scenarios on a peer that quits mid-migration (session 5, helper hidden3).

Expected values are real QEMU answers measured on 7.2.22, 10.0.2 and 10.2.2 (`migconform run
harness/suite/quit-source-during-precopy.toml --qemu 7.2 --qemu 10.0 --qemu 10.2 --repeat 3`).
"""

from __future__ import annotations

import pytest
from model_steps import qmp

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario, Step, VmSpec
from reference_impl import predict

HOST = HostFacts()
THROTTLE = Step("set-parameters", parameters={"max-bandwidth": 100000})
VERSIONS = ("7.2", "10.0", "10.2")


def run(*items: Step, version: str) -> Outcome:
    scenario = Scenario("t", source=VmSpec(memory="64M"), destination=VmSpec(memory="64M"), steps=items)
    return predict(scenario, version, HOST)


@pytest.mark.parametrize("version", VERSIONS)
def test_source_quit_mid_stream_kills_the_destination(version: str) -> None:
    # migration_shutdown cancels the stream: the destination's load fails and it exits 1, as after a cancel.
    outcome = run(THROTTLE, Step("migrate", transport="unix"), qmp("quit"), version=version)
    assert (outcome.verdict, outcome.source, outcome.destination) == ("failed", None, None)
    assert outcome.error == "source QEMU exited with status 0: "


@pytest.mark.parametrize("version", VERSIONS)
def test_source_quit_without_migration_leaves_the_destination_waiting(version: str) -> None:
    outcome = run(qmp("quit"), version=version)
    assert outcome.destination is not None and outcome.destination.runstate == "inmigrate"


def test_source_quit_after_postcopy_request_is_not_modelled() -> None:
    caps = Step("set-capabilities", side="both", capabilities={"postcopy-ram": True})
    steps = (caps, THROTTLE, Step("migrate", transport="unix"), Step("start-postcopy"), qmp("quit"))
    outcome = run(*steps, version="10.0")
    assert outcome.verdict == "skipped" and outcome.skip_reason.startswith("not modelled")
