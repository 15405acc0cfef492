"""The migration state machine and the migrate pre-checks, through predict().

Expected values are real QEMU answers from docs/real-qemu-facts.md (sections named in each test; "real
10.0.2" / "real 7.2.22"), or the QEMU function named where noted.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import MigrationSpec, Scenario, Step, VmSpec
from reference_impl import predict

HOST = HostFacts()
# A migration held active (reference_impl.timing): the steps after it meet it still running.
SLOW = Step("set-parameters", parameters={"max-bandwidth": 1000})


def steps(
    *items: Step,
    source: VmSpec | None = None,
    destination: VmSpec | None = None,
    version: str = "10.0",
    host: HostFacts = HOST,
) -> Outcome:
    scenario = Scenario("t", source=source or VmSpec(), destination=destination or VmSpec(), steps=items)
    return predict(scenario, version, host)


def mig(version: str = "10.0", host: HostFacts = HOST, **kwargs: Any) -> Outcome:
    return predict(Scenario("t", migration=MigrationSpec(**kwargs)), version, host)


def states(outcome: Outcome) -> tuple[Any, ...]:
    src, dst = outcome.source, outcome.destination
    return (
        (src.status, src.runstate) if src else None,
        (dst.status, dst.runstate) if dst else None,
    )


def test_outcome_identity() -> None:
    outcome = mig("10.0.2")
    assert (outcome.backend, outcome.qemu_version, outcome.scenario) == ("reference", "10.0", "t")
    assert mig("9.2.4").qemu_version == "9.2"  # versions.py: newest profile not newer than the binary


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_completed_precopy(version: str) -> None:
    # real 10.0.2 / 7.2.22 #flow-precopy: source completed/postmigrate, destination completed/running.
    outcome = mig(version)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("completed", None, None)
    assert states(outcome) == (("completed", "postmigrate"), ("completed", "running"))


EVENTS_BOTH = Step("set-capabilities", side="both", capabilities={"events": True})


def test_events_per_version() -> None:
    # real #flow-precopy: 10.0.2 always passes through device; 7.2.22 does not.
    plan = (EVENTS_BOTH, Step("migrate"), Step("wait"))
    assert steps(*plan).events == {
        "source": ["setup", "active", "device", "completed"],
        "destination": ["setup", "active", "completed"],
    }
    events_9_2 = steps(*plan, version="9.2").events
    assert events_9_2 is not None and events_9_2["source"] == ["setup", "active", "completed"]
    assert steps(*plan, version="7.2").events == {
        "source": ["setup", "active", "completed"],
        "destination": ["setup", "active", "completed"],
    }
    # without the cap: nothing on 10.0.2; 7.2.22 still sends setup at migrate-incoming
    assert mig("10.0").events == {"source": [], "destination": []}
    assert mig("7.2").events == {"source": [], "destination": ["setup"]}


@pytest.mark.parametrize(
    ("source", "pre", "expected_dst"),
    [
        (VmSpec(args=("-S",)), (), "prelaunch"),  # real: source -S -> destination prelaunch
        (VmSpec(), (Step("stop"),), "paused"),  # real: source stopped -> destination paused
        (VmSpec(), (Step("stop", side="destination"),), "paused"),  # real: stop on inmigrate dest clears autostart
        (VmSpec(), (Step("stop", side="destination"), Step("cont", side="destination")), "running"),
    ],
)
def test_destination_runstate(source: VmSpec, pre: tuple[Step, ...], expected_dst: str) -> None:
    outcome = steps(*pre, Step("migrate"), Step("wait"), source=source)
    assert states(outcome) == (("completed", "postmigrate"), ("completed", expected_dst))


def test_destination_started_paused() -> None:
    # real 10.0.2: destination with -S and a running source ends paused.
    outcome = steps(Step("migrate"), Step("wait"), destination=VmSpec(args=("-S",)))
    assert states(outcome)[1] == ("completed", "paused")


@pytest.mark.parametrize(
    ("version", "source_events"),
    [
        ("10.0", ["setup", "active", "device", "postcopy-active", "completed"]),  # real 10.0.2
        ("7.2", ["setup", "active", "postcopy-active", "completed"]),  # real 7.2.22
        # 10.2 adds postcopy-device (qapi MigrationStatus)
        ("10.2", ["setup", "active", "device", "postcopy-device", "postcopy-active", "completed"]),
    ],
)
def test_postcopy(version: str, source_events: list[str]) -> None:
    outcome = steps(
        Step("set-capabilities", side="both", capabilities={"postcopy-ram": True, "events": True}),
        Step("set-parameters", parameters={"max-bandwidth": 1000}),
        Step("migrate"),
        Step("start-postcopy"),
        Step("wait"),
        version=version,
    )
    assert outcome.verdict == "completed"
    assert states(outcome) == (("completed", "postmigrate"), ("completed", "running"))
    assert outcome.events is not None
    assert outcome.events["source"] == source_events


def test_start_postcopy_preconditions() -> None:
    # real 10.0.2 / 7.2.22 #postcopy.
    outcome = steps(Step("migrate"), Step("start-postcopy"))
    assert (outcome.stage, outcome.error) == (
        "start-postcopy",
        "Enable postcopy with migrate_set_capability before the start of migration",
    )
    outcome = steps(Step("set-capabilities", capabilities={"postcopy-ram": True}), Step("start-postcopy"))
    assert (outcome.stage, outcome.error) == (
        "start-postcopy",
        "Postcopy must be started after migration has been started",
    )
    # qmp_migrate_start_postcopy / migrate_postcopy(): dirty-bitmaps alone also enables start-postcopy
    outcome = steps(
        Step("set-capabilities", capabilities={"dirty-bitmaps": True}),
        Step("migrate"),
        Step("start-postcopy"),
        Step("wait"),
    )
    assert outcome.verdict == "completed"


def test_background_snapshot() -> None:
    # real 10.0.2 #background-snapshot: the source keeps running; the loaded destination runs.
    outcome = mig("10.0", mode="background-snapshot", capabilities={"events": True})
    assert outcome.verdict == "completed"
    assert states(outcome) == (("completed", "running"), ("completed", "running"))
    assert outcome.events is not None and outcome.events["source"] == ["setup", "active", "completed"]
    # caps-rules rule f (docs/real-qemu-facts.md): no UFFD-WP
    outcome = mig("10.0", HostFacts(uffd_wp=False), mode="background-snapshot")
    assert (outcome.stage, outcome.error) == ("set-capabilities", "Background-snapshot is not supported by host kernel")


def test_file_transport_before_8_2() -> None:
    # real 7.2.22 #checks: file: is refused after migrate_init, status failed, runstate unchanged.
    outcome = mig("7.2", mode="background-snapshot")
    assert (outcome.verdict, outcome.stage, outcome.error) == (
        "refused",
        "migrate",
        "Parameter 'uri' expects a valid migration protocol",
    )
    assert states(outcome) == (("failed", "running"), ("none", "inmigrate"))
    # migration_channels_and_transport_compatible: file: exists from 8.2
    assert mig("8.2", transport="file").verdict == "completed"


@pytest.mark.parametrize("transport", ["file", "exec"])
def test_file_and_exec_precopy(transport: str) -> None:
    # real 10.0.2 #flow-precopy: file:/exec: to a file, then loaded: same end states as tcp.
    assert states(mig("10.0", transport=transport)) == (("completed", "postmigrate"), ("completed", "running"))


def test_migrate_twice_and_after_cont() -> None:
    # real #checks: second migrate -> postmigrate message, status stays completed.
    outcome = steps(Step("migrate"), Step("wait"), Step("migrate"))
    assert (outcome.stage, outcome.error) == (
        "migrate",
        "Can't migrate the vm that was paused due to previous migration",
    )
    assert states(outcome) == (("completed", "postmigrate"), ("completed", "running"))
    # real #checks: after cont the reused tcp URI is not listened on any more: failed, source running.
    outcome = steps(Step("migrate"), Step("wait"), Step("cont"), Step("migrate"), Step("wait"))
    assert (outcome.verdict, outcome.stage, outcome.error) == (
        "failed",
        "migration",
        "Failed to connect to '127.0.0.1:<port>': Connection refused",
    )
    assert states(outcome) == (("failed", "running"), ("completed", "running"))


def test_migrate_from_the_destination() -> None:
    # real #checks: "Guest is waiting for an incoming migration" (before or after migrate-incoming).
    outcome = steps(Step("qmp", side="destination", command="migrate", arguments={"uri": "tcp:127.0.0.1:1"}))
    assert (outcome.stage, outcome.error) == ("qmp", "Guest is waiting for an incoming migration")
    # a migrate step with side destination is issued on the destination (harness/pair.py
    # migrate_from_destination): suite precheck-inmigrate, real 10.0.2 and 7.2.22 (/tmp run 22:46): refused@migrate.
    outcome = steps(Step("migrate", side="destination", transport="exec"))
    assert (outcome.verdict, outcome.stage, outcome.error) == (
        "refused",
        "migrate",
        "Guest is waiting for an incoming migration",
    )
    assert states(outcome) == (("none", "running"), ("none", "inmigrate"))


def test_migration_in_progress() -> None:
    # real #checks / #caps-check during an active migration.
    outcome = steps(SLOW, Step("migrate"), Step("migrate"))
    assert outcome.error == "There's a migration process in progress"
    outcome = steps(SLOW, Step("migrate"), Step("set-capabilities", capabilities={"xbzrle": True}))
    assert (outcome.stage, outcome.error) == ("set-capabilities", "There's a migration process in progress")
    assert (
        steps(SLOW, Step("migrate"), Step("set-parameters", parameters={"max-bandwidth": 2000}), Step("wait")).verdict
        == "completed"
    )


def test_destination_caps_after_incoming() -> None:
    # real 10.0.2 #caps-check: multifd on the destination after migrate-incoming is refused; 7.2.22 accepts.
    plan = (SLOW, Step("migrate"), Step("set-capabilities", side="destination", capabilities={"multifd": True}))
    assert steps(*plan).error == "Multifd must be set before incoming starts"
    # real 7.2.22 (docs/real-qemu-facts.md#harness-runs): accepted. With a wait the real destination crashes
    # (SIGSEGV), a known QEMU bug: the model predicts the intended completion
    # (test_7_2_multifd_set_on_a_live_destination_does_not_change_the_running_migration).
    outcome = steps(*plan, Step("wait"), version="7.2")
    assert (outcome.verdict, outcome.stage, outcome.error) == ("completed", None, None)
    # without a wait the states are read while the migration runs
    assert states(steps(*plan, version="7.2"))[1] == ("active", "inmigrate")


def test_cancel() -> None:
    # real #cancel--failure: source cancelled/running; the destination exits 1.
    outcome = steps(SLOW, Step("migrate"), Step("cancel"), Step("wait"))
    assert (outcome.verdict, outcome.stage) == ("failed", "migration")
    assert outcome.error == "destination QEMU exited with status 1: load of migration failed: Invalid argument"
    assert states(outcome) == (("cancelled", "running"), None)
    # idle cancel is a no-op (real: {})
    assert steps(Step("cancel")).verdict == "completed"
    # A cancel after the switch to postcopy was requested races the unthrottled postcopy phase (real 7.2.22 let
    # the destination complete once): reference_impl.timing says so instead of guessing.
    pc = (
        Step("set-capabilities", side="both", capabilities={"postcopy-ram": True}),
        Step("migrate"),
        Step("start-postcopy"),
        Step("cancel"),
        Step("wait"),
    )
    assert "max-postcopy-bandwidth 0" in (steps(*pc).not_modelled or "")
    # With the postcopy phase throttled too it is still a race: real 10.0.2 once let the cancel land before the
    # switch (destination exits 1), and refused it in postcopy-active in a later run ("Postcopy migration in
    # progress, cannot cancel.", max-postcopy-bandwidth 10000; docs/real-qemu-facts.md "qmp-corners").
    slow_pc = (Step("set-parameters", parameters={"max-postcopy-bandwidth": 1000}), *pc)
    for version in ("10.0", "7.2"):
        assert "max-postcopy-bandwidth 1000" in (steps(*slow_pc, version=version).not_modelled or "")


@pytest.mark.parametrize(
    ("version", "caps", "transport", "expected"),
    [
        # real 10.0.2 #checks (synchronous refusals, status stays none)
        ("10.0", {"multifd": True}, "exec", "Migration requires multi-channel URIs (e.g. tcp)"),
        ("10.0", {"multifd": True}, "file", "Migration requires multi-channel URIs (e.g. tcp)"),
        (
            "10.0",
            {"postcopy-ram": True, "postcopy-preempt": True},
            "exec",
            "Migration requires multi-channel URIs (e.g. tcp)",
        ),
        ("10.0", {"mapped-ram": True}, "tcp", "Migration requires seekable transport (e.g. file)"),
        ("10.0", {"mapped-ram": True, "multifd": True}, "tcp", "Migration requires seekable transport (e.g. file)"),
    ],
)
def test_transport_checks(version: str, caps: dict[str, bool], transport: str, expected: str) -> None:
    outcome = mig(version, capabilities=caps, transport=transport)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "migrate", expected)
    assert outcome.source is not None and outcome.source.status == "none"


def test_mapped_ram_file() -> None:
    # migration_channels_and_transport_compatible: mapped-ram (+multifd) to file: is fine; real 10.0.2: with
    # compression it is refused.
    assert mig("10.0", capabilities={"mapped-ram": True, "multifd": True}, transport="file").verdict == "completed"
    outcome = steps(
        Step("set-capabilities", capabilities={"mapped-ram": True}),
        Step("set-parameters", parameters={"multifd-compression": "zlib"}),
        Step("migrate", transport="file"),
    )
    assert (outcome.stage, outcome.error) == ("migrate", "Cannot use compression with mapped-ram")


def test_multifd_exec_on_7_2_fails_late() -> None:
    # real 7.2.22 #slots-and-buses: accepted, then failed with this stderr line and no error-desc.
    outcome = mig("7.2", capabilities={"multifd": True}, transport="exec")
    assert (outcome.verdict, outcome.stage, outcome.error) == (
        "failed",
        "migration",
        "multifd is not supported by current protocol",
    )
    assert states(outcome) == (("failed", "running"), ("none", "inmigrate"))


def test_stop_cont_on_source() -> None:
    # real #checks: cont after postmigrate runs the VM again.
    outcome = steps(Step("migrate"), Step("wait"), Step("cont"))
    assert states(outcome)[0] == ("completed", "running")
    assert states(steps(Step("stop")))[0] == ("none", "paused")
    assert states(steps(Step("stop"), source=VmSpec(args=("-S",))))[0] == ("none", "prelaunch")


def test_snapshot_save() -> None:
    # real #snapshot-save: no block device -> the job's error.
    outcome = steps(Step("snapshot-save"))
    assert (outcome.stage, outcome.error) == ("snapshot-save", "At least one device is required for snapshot")
    # migration_is_blocked (save_snapshot): snapshot-save is blocked like migrate
    outcome = steps(Step("snapshot-save"), source=VmSpec(args=("-device", "nvme,serial=x")))
    assert outcome.error == "State blocked by non-migratable device '0000:00:01.0/nvme'"
    # real 10.0.2 (#harness-runs): with a qcow2 drive the job succeeds and query-migrate reads completed
    qcow2 = VmSpec(args=("-drive", "if=none,id=d0,file=/tmp/s.qcow2,format=qcow2"))
    outcome = steps(Step("snapshot-save"), source=qcow2)
    assert (outcome.verdict, states(outcome)[0]) == ("completed", ("completed", "running"))


def test_dump_guest_memory_blocker() -> None:
    # real 10.0.2 / 7.2.22 (#harness-runs): dump-guest-memory detach=true, then migrate: refused with the
    # internal blocker, source in save-vm.
    dump = Step(
        "qmp", command="dump-guest-memory", arguments={"paging": False, "protocol": "file:/tmp/d", "detach": True}
    )
    outcome = steps(dump, Step("migrate"))
    assert (outcome.stage, outcome.error) == ("migrate", "Live migration disabled: dump-guest-memory in progress")
    assert states(outcome)[0] == ("none", "save-vm")
    # after a wait the dump is over and migration works (model assumption: the dump of 256M is quick)
    assert steps(dump, Step("wait"), Step("migrate"), Step("wait")).verdict == "completed"


def test_qmp_step_runs_the_command() -> None:
    # the executor names a refused qmp step's stage "qmp" (contract.actions)
    outcome = steps(
        Step(
            "qmp",
            command="migrate-set-capabilities",
            arguments={"capabilities": [{"capability": "switchover-ack", "state": True}]},
        )
    )
    assert (outcome.stage, outcome.error) == ("qmp", "Capability 'switchover-ack' requires capability 'return-path'")


def test_quit() -> None:
    # real 10.0.2 / 7.2.22 (docs/real-qemu-facts.md#harness-runs): quit exits 0 with no stderr line.
    quit_dst = Step("qmp", side="destination", command="quit")
    outcome = steps(quit_dst)
    assert (outcome.verdict, outcome.stage, outcome.error) == (
        "failed",
        "migration",
        "destination QEMU exited with status 0: ",
    )
    assert states(outcome) == (("none", "running"), None)
    # during a migration: the source fails writing (real 10.0.2)
    outcome = steps(Step("set-parameters", parameters={"max-bandwidth": 1000}), Step("migrate"), quit_dst, Step("wait"))
    assert (outcome.verdict, outcome.error) == ("failed", "Unable to write to socket: Broken pipe")
    assert states(outcome) == (("failed", "running"), None)


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_pause_before_switchover_parks(version: str) -> None:
    # real 10.0.2 and 7.2.22 (suite pause-before-switchover-parks, 2026-11-25 23:03): parked in pre-switchover;
    # the executor's wait ends there; verdict completed with the source stopped for switchover.
    outcome = mig(version, capabilities={"pause-before-switchover": True, "events": True})
    assert (outcome.verdict, outcome.stage, outcome.error) == ("completed", None, None)
    assert states(outcome) == (("pre-switchover", "finish-migrate"), ("active", "inmigrate"))
    assert outcome.events is not None and outcome.events["source"] == ["setup", "active", "pre-switchover"]


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_migrate_continue(version: str) -> None:
    # real 10.0.2 and 7.2.22 (suite pause-before-switchover-continue, 2026-11-25 23:03): pre-switchover ->
    # device -> completed on both versions; a second migrate-continue is refused with the current status.
    outcome = steps(
        Step("set-capabilities", capabilities={"pause-before-switchover": True, "events": True}),
        Step("migrate"),
        Step("wait"),
        Step("migrate-continue"),
        Step("wait"),
        Step("migrate-continue"),
        version=version,
    )
    assert (outcome.verdict, outcome.stage, outcome.error) == (
        "refused",
        "migrate-continue",
        "Migration not in expected state: completed",
    )
    assert states(outcome) == (("completed", "postmigrate"), ("completed", "running"))
    assert outcome.events is not None and outcome.events["source"] == [
        "setup",
        "active",
        "pre-switchover",
        "device",
        "completed",
    ]


def test_compress_without_destination_support_fails() -> None:
    # real 7.2.22 (harness sweep, docs/real-qemu-facts.md#sweep): compress is set on the source only (it is
    # not among the destination's caps); the destination cannot load the stream.
    outcome = mig("7.2", capabilities={"compress": True})
    assert (outcome.verdict, outcome.stage, outcome.error) == (
        "failed",
        "migration",
        "Unable to write to socket: Connection reset by peer",
    )
    assert states(outcome) == (("failed", "running"), None)
    both = steps(
        Step("set-capabilities", side="both", capabilities={"compress": True}),
        Step("migrate"),
        Step("wait"),
        version="7.2",
    )
    assert both.verdict == "completed"


def test_x_colo() -> None:
    # real 7.2.22: the sweep saw both sides enter COLO; 4 later runs a hung source monitor or a destination abort.
    assert mig("7.2", capabilities={"x-colo": True}).not_modelled
    # real 10.0.2 (sweep): the source fails after precopy and the destination is gone.
    outcome = mig("10.0", capabilities={"x-colo": True})
    assert (outcome.verdict, outcome.error) == ("failed", "Unable to write to socket: Connection reset by peer")
    assert states(outcome) == (("failed", "running"), None)


def test_incoming_checks_the_transport() -> None:
    # real 10.0.2 (sweep): mapped-ram on both sides over tcp: migrate-incoming already refuses, status none.
    outcome = mig("10.0", capabilities={"mapped-ram": True})
    assert (outcome.stage, outcome.error) == ("migrate", "Migration requires seekable transport (e.g. file)")
    assert states(outcome) == (("none", "running"), ("none", "inmigrate"))


def test_sweep_orderings_on_7_2() -> None:
    # real 7.2.22 (harness sweep): pause-before-switchover parks before COLO is reached.
    outcome = mig("7.2", capabilities={"x-colo": True, "pause-before-switchover": True})
    assert states(outcome)[0] == ("pre-switchover", "finish-migrate")
    # real 7.2.22: background-snapshot + block over tcp hung the source's monitor in one sweep and completed in
    # the 2026-11-25 23:07 sweep (a race, docs/qemu-bugs.md): the model predicts completion.
    outcome = mig("7.2", capabilities={"background-snapshot": True, "block": True})
    assert outcome.verdict == "completed"
    # real 7.2.22: a broken stream fails after active (events setup, active, failed)
    outcome = mig("7.2", capabilities={"compress": True, "events": True})
    assert outcome.events is not None and outcome.events["source"] == ["setup", "active", "failed"]


def test_fast_precopy_races_postcopy() -> None:
    # A scenario that sets its own fast max-bandwidth keeps it: the harness sweep saw the idle VM's precopy
    # complete before the switch, but whether it does is timing (reference_impl.timing), so not modelled.
    for fast in (134217728, 0):  # 0 disables the rate limit (migration_rate_exceeded: RATE_LIMIT_DISABLED)
        outcome = mig(
            "10.0",
            capabilities={"postcopy-ram": True, "events": True},
            parameters={"max-bandwidth": fast},
            mode="postcopy",
        )
        assert outcome.verdict == "skipped" and f"max-bandwidth {fast}" in (outcome.not_modelled or "")


def test_unthrottled_migration_is_not_guessed() -> None:
    # migconform fuzz, 7.2.22 and 10.0.2: [migrate] alone and [migrate, cancel] read completed on most runs and
    # active on some. A throttled migration of a 64M VM is still active at the final read at 200,000 B/s (the
    # suite's); 1 MiB/s completed on 1 run of 9 (7.2.22, 10.0.2, 10.2.2).
    end = steps(Step("migrate"))
    assert end.verdict == "skipped" and "final states" in (end.not_modelled or "")
    cancel = steps(Step("migrate", transport="exec"), Step("cancel"))
    assert cancel.verdict == "skipped" and (cancel.not_modelled or "").startswith("cancel step")
    vm = VmSpec(memory="64M")
    for rate, modelled in ((200_000, True), (1 << 20, False), (0, False)):
        outcome = steps(Step("set-parameters", parameters={"max-bandwidth": rate}), Step("migrate"), source=vm)
        assert (outcome.not_modelled is None) is modelled
        if modelled:
            assert states(outcome) == (("active", "running"), ("active", "inmigrate"))
    small = steps(
        Step("set-parameters", parameters={"max-bandwidth": 1000}), Step("migrate"), source=VmSpec(memory="16M")
    )
    assert small.verdict == "skipped"  # a smaller VM's stream was not measured
    assert steps(Step("migrate"), Step("wait")).verdict == "completed"


def test_executor_paces_postcopy() -> None:
    # harness/execution/steps.py pace_for_postcopy: no max-bandwidth in the scenario -> 1,000,000 B/s before migrate,
    # so the switch happens (real 10.0.2, suite postcopy-* scenarios: postcopy-active in the source events).
    outcome = mig("10.0", capabilities={"postcopy-ram": True, "events": True}, mode="postcopy")
    assert outcome.events is not None and outcome.events["source"] == [
        "setup",
        "active",
        "device",
        "postcopy-active",
        "completed",
    ]


def test_dirty_bitmaps_alone_never_switches() -> None:
    # real 10.0.2 and 7.2.22 (suite postcopy-dirty-bitmaps-only, run 22:46): start-postcopy accepted, no
    # postcopy-active.
    for version, path in (
        ("10.0", ["setup", "active", "device", "completed"]),
        ("7.2", ["setup", "active", "completed"]),
    ):
        outcome = mig(
            version,
            capabilities={"dirty-bitmaps": True, "events": True},
            parameters={"max-bandwidth": 1000000},
            mode="postcopy",
        )
        assert outcome.events is not None and outcome.events["source"] == path


@pytest.mark.parametrize(
    ("version", "transport", "expected"),
    [
        # real 10.0.2 (harness sweep): a return path over file: / exec:
        ("10.0", "file", ("failed", "Unable to read from file: Bad file descriptor", ("failed", "running"))),
        (
            "10.0",
            "exec",
            (
                "failed",
                "timed out after 60 s waiting for the source migration to end (last seen: device)",
                ("device", "finish-migrate"),
            ),
        ),
        (
            "7.2",
            "exec",
            (
                "failed",
                "timed out after 60 s waiting for the source migration to end (last seen: active)",
                ("active", "finish-migrate"),
            ),
        ),
    ],
)
def test_return_path_over_one_way_transports(version: str, transport: str, expected: tuple[Any, ...]) -> None:
    for caps in ({"return-path": True}, {"postcopy-ram": True}):
        outcome = mig(version, capabilities=caps, transport=transport)
        assert (outcome.verdict, outcome.error, states(outcome)[0]) == expected
        assert states(outcome)[1] == ("none", "inmigrate")


def test_stream_load_failures() -> None:
    # real (harness sweep): the destination cannot load the file; the source completed.
    for version, caps, line in (
        ("7.2", {"compress": True}, "Invalid argument"),
        ("10.0", {"x-colo": True}, "Invalid argument"),
    ):
        outcome = mig(version, capabilities=caps, transport="exec")
        assert outcome.error == f"destination QEMU exited with status 1: load of migration failed: {line}"
        assert states(outcome) == (("completed", "postmigrate"), None)
    # background-snapshot + mapped-ram: the load failed with EPERM in 3 of 6 runs (a race, docs/qemu-bugs.md): the
    # model predicts completion.
    assert mig("10.0", capabilities={"mapped-ram": True}, mode="background-snapshot").verdict == "completed"


@pytest.mark.parametrize("mode", ["precopy", "background-snapshot"])
def test_mapped_ram_with_ignore_shared_means_to_load(mode: str) -> None:
    # Intended behaviour, not real 10.0.2: ram_save_setup writes each block's GPA (x-ignore-shared) before its
    # mapped-ram header, and parse_ramblock is meant to read what was written. Real 10.0.2 returns early after
    # parse_ramblock_mapped_ram and fails the load with EINVAL (sweep 2026-11-25 23:07, 2 of 2): a known QEMU
    # bug (docs/qemu-bugs.md "9."), so the model must not predict the failure.
    outcome = mig("10.0", capabilities={"mapped-ram": True, "x-ignore-shared": True}, transport="file", mode=mode)
    assert (outcome.verdict, outcome.error) == ("completed", None)
    assert outcome.destination is not None and outcome.destination.status == "completed"


def test_sweep_2026_11_25_rules() -> None:
    # Each expected value is the real outcome in the sweep of 2026-11-25 23:07 (`migconform sweep --size 2`).
    # 7.2.22 compress (source only) with a return path: the write fails with EBADF.
    outcome = mig("7.2", capabilities={"compress": True, "return-path": True})
    assert outcome.error == "Unable to write to socket: Bad file descriptor"
    # 10.0.2 x-colo with a return path: the destination's shut message; with multifd: the channel setup.
    outcome = mig("10.0", capabilities={"x-colo": True, "return-path": True, "events": True})
    assert outcome.error == "Sibling indicated error 1"
    assert outcome.events is not None and outcome.events["source"] == ["setup", "active", "failed"]
    assert mig("10.0", capabilities={"x-colo": True, "multifd": True}).error == (
        "ram_save_setup failed: Input/output error"
    )
    # 7.2.22 x-colo after a postcopy switch: no COLO, completed.
    outcome = mig("7.2", capabilities={"x-colo": True, "postcopy-ram": True}, mode="postcopy")
    assert (outcome.verdict, states(outcome)) == ("completed", (("completed", "postmigrate"), ("completed", "running")))
    # 7.2.22 x-colo with a return path in precopy: the return-path thread fails on COLO's traffic.
    outcome = mig("7.2", capabilities={"x-colo": True, "return-path": True})
    assert (outcome.error, states(outcome)) == (
        "RP: Received invalid message 0x0000 length 0x0000",
        (("failed", "running"), ("colo", "running")),
    )
    # 10.0.2 return path over file: fails at switchover (events through device); with switchover-ack the source
    # waits in active for the ack.
    outcome = mig("10.0", capabilities={"return-path": True, "events": True}, transport="file")
    assert outcome.events is not None and outcome.events["source"] == ["setup", "active", "device", "failed"]
    outcome = mig("10.0", capabilities={"return-path": True, "switchover-ack": True}, transport="file")
    assert (outcome.error, states(outcome)[0]) == (
        "timed out after 60 s waiting for the source migration to end (last seen: active)",
        ("active", "running"),
    )
    # 10.0.2 pause-before-switchover comes before the return path's read failure over file.
    outcome = mig("10.0", capabilities={"return-path": True, "pause-before-switchover": True}, transport="file")
    assert (outcome.verdict, states(outcome)[0]) == ("completed", ("pre-switchover", "finish-migrate"))


@pytest.mark.parametrize("preempt", [False, True])
def test_7_2_postcopy_with_multifd_means_to_complete(preempt: bool) -> None:
    # Intended behaviour, not real 7.2.22: 7.2 accepts postcopy-ram + multifd (rule e came in 8.1) and
    # postcopy_ram_listen_thread completes the incoming side before migration_incoming_state_destroy. Real 7.2.22
    # aborts the destination in that cleanup (yank_unregister_instance): a known QEMU bug (harness/known_bugs.py,
    # docs/qemu-bugs.md "5."), so the model must not predict the abort.
    caps = {"multifd": True, "postcopy-ram": True, "events": True}
    if preempt:
        caps["postcopy-preempt"] = True
    outcome = mig("7.2", capabilities=caps, mode="postcopy")
    assert (outcome.verdict, outcome.error) == ("completed", None)
    assert states(outcome) == (("completed", "postmigrate"), ("completed", "running"))
    assert outcome.events is not None
    assert outcome.events["source"] == ["setup", "active", "postcopy-active", "completed"]


def test_7_2_multifd_set_on_a_live_destination_does_not_change_the_running_migration() -> None:
    # Intended behaviour, not real 7.2.22: 7.2 accepts the request (migration_is_running looks at the outgoing
    # side only), but capabilities are meant to stay fixed for a running migration. Real 7.2.22 dies with
    # SIGSEGV in multifd_recv_sync_main: a known QEMU bug (docs/qemu-bugs.md "8."), not a prediction.
    outcome = steps(
        SLOW,
        Step("migrate"),
        Step("set-capabilities", side="destination", capabilities={"multifd": True}),
        Step("wait"),
        version="7.2",
    )
    assert (outcome.verdict, outcome.error) == ("completed", None)
    assert states(outcome) == (("completed", "postmigrate"), ("completed", "running"))
