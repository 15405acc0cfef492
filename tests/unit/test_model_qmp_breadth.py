"""Raw ``qmp`` steps that steer a migration by hand (reference_impl.qmp_postcopy) and cont/stop runstates.

Expected values are real QEMU answers: the bundled scenarios named in each test, run on 10.0.2 and 7.2.22 on
2026-12-03 (`migconform run <files> --jobs 2 --repeat 5`, all stable); docs/real-qemu-facts.md "QMP breadth".
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario, Step, VmSpec
from reference_impl import predict

HOST = HostFacts()
SLOW = Step("set-parameters", parameters={"max-bandwidth": 100000})
MIGRATE = Step("migrate", transport="tcp")
PAUSE_72 = "migrate-pause is currently only supported during postcopy-active state"
PAUSE_100 = "migrate-pause is currently only supported during postcopy-active or postcopy-recover state"
RECOVER = "Migrate recover can only be run when postcopy is paused."
TCP = {"uri": "tcp:127.0.0.1:0"}


def run(*items: Step, version: str = "10.0") -> Outcome:
    scenario = Scenario("t", source=VmSpec(memory="64M"), destination=VmSpec(memory="64M"), steps=items)
    return predict(scenario, version, HOST)


def qmp(command: str, side: str = "source", **arguments: Any) -> Step:
    return Step("qmp", side=side, command=command, arguments=arguments)


def refusal(outcome: Outcome) -> tuple[Any, ...]:
    return outcome.verdict, outcome.stage, outcome.error


def states(outcome: Outcome) -> tuple[Any, ...]:
    src, dst = outcome.source, outcome.destination
    return ((src.status, src.runstate) if src else None, (dst.status, dst.runstate) if dst else None)


@pytest.mark.parametrize(("version", "text"), [("10.0", PAUSE_100), ("7.2", PAUSE_72)])
def test_migrate_pause_refused_outside_postcopy(version: str, text: str) -> None:
    # qmp-pause-idle, qmp-pause-precopy, qmp-pause-incoming-destination.
    assert refusal(run(qmp("migrate-pause"), version=version)) == ("refused", "qmp", text)
    outcome = run(SLOW, MIGRATE, qmp("migrate-pause"), version=version)
    assert refusal(outcome) == ("refused", "qmp", text)
    assert states(outcome) == (("active", "running"), ("active", "inmigrate"))
    incoming = qmp("migrate-incoming", "destination", **TCP)
    assert refusal(run(incoming, qmp("migrate-pause", "destination"), version=version)) == ("refused", "qmp", text)


def test_migrate_pause_in_postcopy_is_not_modelled() -> None:
    # Measured: the destination either exits 1 or pauses with a blocked monitor, depending on timing.
    caps = Step("set-capabilities", side="both", capabilities={"postcopy-ram": True})
    params = Step("set-parameters", parameters={"max-bandwidth": 200000, "max-postcopy-bandwidth": 10000})
    for side in ("source", "destination"):
        outcome = run(caps, params, MIGRATE, Step("start-postcopy"), qmp("migrate-pause", side))
        # reference_impl.timing now says it first: whether the postcopy is still running is timing.
        assert "postcopy switch requested" in (outcome.not_modelled or "")


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_migrate_recover_refused_unless_paused(version: str) -> None:
    # qmp-recover-idle-destination, qmp-recover-source, qmp-recover-during-precopy.
    for side in ("destination", "source"):
        assert refusal(run(qmp("migrate-recover", side, **TCP), version=version)) == ("refused", "qmp", RECOVER)
    outcome = run(SLOW, MIGRATE, qmp("migrate-recover", "destination", **TCP), version=version)
    assert refusal(outcome) == ("refused", "qmp", RECOVER)
    assert run(qmp("migrate-recover", "destination")).not_modelled == "migrate-recover without 'uri'"


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_migrate_incoming_once(version: str) -> None:
    # qmp-incoming-twice, qmp-incoming-after-migrate, qmp-incoming-on-source.
    incoming = qmp("migrate-incoming", "destination", **TCP)
    twice = ("refused", "qmp", "The incoming migration has already been started")
    assert refusal(run(incoming, incoming, version=version)) == twice
    assert refusal(run(SLOW, MIGRATE, incoming, version=version)) == twice
    on_source = ("refused", "qmp", "'-incoming' was not specified on the command line")
    assert refusal(run(qmp("migrate-incoming", **TCP), version=version)) == on_source


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_migrate_continue_raw(version: str) -> None:
    # qmp-continue-idle, qmp-continue-precopy, qmp-continue-pre-switchover.
    cont = qmp("migrate-continue", state="pre-switchover")
    assert refusal(run(cont, version=version)) == ("refused", "qmp", "Migration not in expected state: none")
    assert refusal(run(SLOW, MIGRATE, cont, version=version)) == (
        "refused",
        "qmp",
        "Migration not in expected state: active",
    )
    park = Step("set-capabilities", capabilities={"pause-before-switchover": True, "events": True})
    outcome = run(park, MIGRATE, Step("wait"), cont, Step("wait"), version=version)
    assert outcome.verdict == "completed"
    assert states(outcome) == (("completed", "postmigrate"), ("completed", "running"))
    assert outcome.events is not None and outcome.events["source"][-2:] == ["device", "completed"]
    assert run(qmp("migrate-continue")).not_modelled == "migrate-continue without a 'state' string"


def test_migrate_continue_matching_state_without_pause_is_a_no_op() -> None:
    # qmp_migrate_continue only posts pause_sem: nothing waits on it without pause-before-switchover.
    outcome = run(SLOW, MIGRATE, qmp("migrate-continue", state="active"))
    assert outcome.verdict == "completed" and states(outcome) == (("active", "running"), ("active", "inmigrate"))


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_cont_stop_runstates(version: str) -> None:
    # qmp-cont-pre-switchover: cont in finish-migrate is refused.
    park = Step("set-capabilities", capabilities={"pause-before-switchover": True})
    outcome = run(park, MIGRATE, Step("wait"), Step("cont"), version=version)
    assert refusal(outcome) == ("refused", "cont", "Migration is not finalized yet")
    # stop-destination-inmigrate / cont-destination-inmigrate: autostart decides the destination's runstate.
    wait = Step("wait")
    assert states(run(Step("stop", side="destination"), MIGRATE, wait, version=version))[1] == ("completed", "paused")
    assert states(run(Step("cont", side="destination"), MIGRATE, wait, version=version))[1] == (
        "completed",
        "running",
    )
    # stop-postmigrate, stop-cont-paused.
    assert states(run(MIGRATE, wait, Step("stop"), version=version))[0] == ("completed", "postmigrate")
    assert states(run(Step("stop"), Step("stop"), Step("cont"), version=version))[0] == ("none", "running")


LOAD = {"job-id": "load0", "tag": "none", "vmstate": "none", "devices": []}


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_snapshot_load_and_delete_jobs(version: str) -> None:
    # qmp-snapshot-load-no-disk, -then-cont, -paused, -destination, qmp-snapshot-delete-no-disk.
    load = qmp("snapshot-load", **LOAD)
    outcome = run(load, version=version)
    assert outcome.verdict == "completed" and states(outcome)[0] == ("none", "restore-vm")
    assert states(run(load, Step("cont"), version=version))[0] == ("none", "running")
    assert states(run(Step("stop"), load, version=version))[0] == ("none", "paused")
    assert states(run(qmp("snapshot-load", "destination", **LOAD), version=version))[1] == ("none", "inmigrate")
    delete = qmp("snapshot-delete", **{"job-id": "del0", "tag": "none", "devices": []})
    assert states(run(delete, version=version))[0] == ("none", "running")


def test_snapshot_job_ids() -> None:
    # qmp-snapshot-load-job-id-reused, qmp-snapshot-delete-job-id-reused, qmp-snapshot-load-bad-job-id.
    load = qmp("snapshot-load", **LOAD)
    assert refusal(run(load, load)) == ("refused", "qmp", "Job ID 'load0' already in use")
    delete = qmp("snapshot-delete", **{"job-id": "load0", "tag": "none", "devices": []})
    assert refusal(run(load, delete)) == ("refused", "qmp", "Job ID 'load0' already in use")
    # Each VM has its own jobs.
    assert run(load, qmp("snapshot-load", "destination", **LOAD)).verdict == "completed"
    bad = qmp("snapshot-load", **{**LOAD, "job-id": "0load"})
    assert refusal(run(bad)) == ("refused", "qmp", "Invalid job ID '0load'")
    missing = qmp("snapshot-load", **{k: v for k, v in LOAD.items() if k != "devices"})
    assert run(missing).not_modelled == "snapshot-load without 'devices'"


def test_snapshot_load_with_a_disk_is_not_modelled() -> None:
    vm = VmSpec(memory="64M", args=("-drive", "if=none,id=d0,format=qcow2,file=/nonexistent.qcow2"))
    scenario = Scenario("t", source=vm, destination=vm, steps=(qmp("snapshot-load", **LOAD),))
    outcome = predict(scenario, "10.0", HOST)
    assert outcome.not_modelled is not None and "with a disk" in outcome.not_modelled


def test_id_wellformed() -> None:
    from reference_impl.qmp_jobs import id_wellformed

    assert id_wellformed("a-b.c_9")
    assert not id_wellformed("")
    assert not id_wellformed("9a")
    assert not id_wellformed("a b")
    assert not id_wellformed("é")


@pytest.mark.parametrize(("version", "paused_end"), [("10.0", "paused"), ("7.2", "postmigrate")])
def test_cancel_out_of_pre_switchover(version: str, paused_end: str) -> None:
    # qmp-cancel-pre-switchover, qmp-cancel-pre-switchover-paused: migration_iteration_finish after a cancel.
    park = Step("set-capabilities", capabilities={"pause-before-switchover": True})
    cancel, wait = qmp("migrate_cancel"), Step("wait")
    outcome = run(park, MIGRATE, wait, cancel, wait, version=version)
    assert outcome.verdict == "failed" and states(outcome) == (("cancelled", "running"), None)
    assert outcome.error == "destination QEMU exited with status 1: load of migration failed: Invalid argument"
    outcome = run(Step("stop"), park, MIGRATE, wait, cancel, wait, version=version)
    assert states(outcome)[0] == ("cancelled", paused_end)
    # qmp-cancel-destination-during-precopy: the destination has no outgoing migration to cancel.
    outcome = run(SLOW, MIGRATE, qmp("migrate_cancel", "destination"), version=version)
    assert outcome.verdict == "completed" and states(outcome) == (("active", "running"), ("active", "inmigrate"))


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_migrate_incoming_dispatch_errors(version: str) -> None:
    # qmp-incoming-bogus-scheme, qmp-incoming-file-missing, qmp-incoming-unix-missing-dir.
    events = Step("set-capabilities", side="destination", capabilities={"events": True})

    def incoming(uri: str) -> Outcome:
        return run(events, qmp("migrate-incoming", "destination", uri=uri), version=version)

    new = version == "10.0"
    outcome = incoming("bogus:x")
    assert refusal(outcome) == ("refused", "qmp", "unknown migration protocol: bogus:x")
    assert outcome.events == {"source": [], "destination": [] if new else ["setup"]}
    assert states(outcome)[1] == ("none", "inmigrate")
    outcome = incoming("file:/nonexistent-migconform/x")
    file_error = "Could not open '/nonexistent-migconform/x': No such file or directory"
    assert outcome.error == (file_error if new else "unknown migration protocol: file:/nonexistent-migconform/x")
    assert states(outcome)[1] == ("setup" if new else "none", "inmigrate")
    assert outcome.events is not None and outcome.events["destination"] == ["setup"]
    outcome = incoming("unix:/nonexistent-migconform/sock")
    assert outcome.error == "Failed to bind socket to /nonexistent-migconform/sock: No such file or directory"
    assert states(outcome)[1] == ("setup" if new else "none", "inmigrate")


def test_migrate_incoming_dispatch_limits() -> None:
    assert run(qmp("migrate-incoming", "destination", uri="fd:3"), version="8.1").not_modelled is not None
    outcome = run(qmp("migrate-incoming", "destination", uri="file:/dev/null"))
    assert outcome.not_modelled == "migrate-incoming of an existing file (the destination loads it at once)"
