"""Raw ``qmp`` steps, chardev blockers, config mismatches and the executor's step semantics, through predict().

Expected values are real QEMU answers: the bundled suite run against 10.0.2 and 7.2.22 on 2026-11-25 (22:46 UTC,
`migconform run harness/suite --jobs 2`; the scenario id is named in each test) and
docs/real-qemu-facts.md / docs/suite-divergences.md where noted.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import MigrationSpec, Scenario, Step, VmSpec
from reference_impl import predict

HOST = HostFacts()
VDAGENT = {"id": "vd0", "backend": {"type": "qemu-vdagent", "data": {}}}
VDAGENT_BLOCKER = "The vdagent chardev doesn't yet support migration"
IVSHMEM_BLOCKER = "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"
ROOT_PORT = ("-device", "pcie-root-port,id=rp0,chassis=1")
SLOW = Step("set-parameters", parameters={"max-bandwidth": 1000})
BACKEND = ("-object", "memory-backend-ram,id=hb0,size=1M,share=on")


def run(
    *items: Step,
    vm: VmSpec | None = None,
    destination: VmSpec | None = None,
    version: str = "10.0",
    migration: MigrationSpec | None = None,
) -> Outcome:
    scenario = Scenario(
        "t", source=vm or VmSpec(), destination=destination or vm or VmSpec(), steps=items or None, migration=migration
    )
    return predict(scenario, version, HOST)


def qmp(command: str, side: str = "source", **arguments: Any) -> Step:
    return Step("qmp", side=side, command=command, arguments=arguments)


def states(outcome: Outcome) -> tuple[Any, ...]:
    src, dst = outcome.source, outcome.destination
    return ((src.status, src.runstate) if src else None, (dst.status, dst.runstate) if dst else None)


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_vdagent_chardev_blocks(version: str) -> None:
    # blocker-vdagent (both versions): refused@migrate with the vdagent blocker (measured on both,
    # docs/real-qemu-facts.md qmp-steps).
    vm = VmSpec(args=("-chardev", "qemu-vdagent,id=vd0,name=vdagent"))
    outcome = run(migration=MigrationSpec(), vm=vm, version=version)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "migrate", VDAGENT_BLOCKER)
    # only-migratable-vdagent: refused@startup.
    outcome = run(migration=MigrationSpec(), vm=VmSpec(only_migratable=True, args=vm.args), version=version)
    assert (outcome.stage, outcome.error) == (
        "startup",
        f"disallowing migration blocker (--only-migratable) for: {VDAGENT_BLOCKER}",
    )


def test_vdagent_blocker_gone_in_10_1() -> None:
    # vdagent migration support in 10.1 removes the blocker.
    vm = VmSpec(args=("-chardev", "qemu-vdagent,id=vd0,name=vdagent"))
    assert run(migration=MigrationSpec(), vm=vm, version="10.1").verdict == "completed"


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_chardev_add(version: str) -> None:
    # blocker-chardev-add-idle: the hot-added vdagent blocks the next migrate.
    outcome = run(qmp("chardev-add", **VDAGENT), Step("migrate"), version=version)
    assert (outcome.stage, outcome.error) == ("migrate", VDAGENT_BLOCKER)
    # blocker-chardev-add-during-migration: the busy check, with chardev-add's prefix.
    outcome = run(SLOW, Step("migrate"), qmp("chardev-add", **VDAGENT), version=version)
    assert (outcome.stage, outcome.error) == (
        "qmp",
        "Failed to add chardev 'vd0': disallowing migration blocker "
        f"(migration/snapshot in progress) for: {VDAGENT_BLOCKER}",
    )
    assert outcome.source is not None and outcome.source.status == "active"
    # blocker-chardev-remove-unblocks: removing the chardev removes its blocker.
    outcome = run(
        qmp("chardev-add", **VDAGENT), qmp("chardev-remove", id="vd0"), Step("migrate"), Step("wait"), version=version
    )
    assert outcome.verdict == "completed"
    # qmp-chardev-add-duplicate-id, qmp-chardev-add-id-of-command-line (found by migconform fuzz): qemu_chr_find
    # refuses a taken id first, without chardev-add's prefix.
    taken = "Chardev with id 'vd0' already exists"
    assert run(qmp("chardev-add", **VDAGENT), qmp("chardev-add", **VDAGENT), version=version).error == taken
    cli = VmSpec(args=("-chardev", "qemu-vdagent,id=vd0,name=vdagent"))
    assert run(qmp("chardev-add", **VDAGENT), vm=cli, version=version).error == taken


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_device_add(version: str) -> None:
    ivshmem = qmp("device_add", driver="ivshmem-plain", memdev="hb0", bus="rp0", id="iv0")
    # blocker-device-add-during-migration: refused before realize.
    outcome = run(
        SLOW,
        Step("migrate"),
        qmp("device_add", driver="virtio-rng-pci", bus="rp0", id="rng0"),
        vm=VmSpec(args=ROOT_PORT),
        version=version,
    )
    assert (outcome.stage, outcome.error) == ("qmp", "device_add not allowed while migrating")
    # only-migratable-hotplug: the ivshmem blocker is refused by -only-migratable.
    outcome = run(ivshmem, vm=VmSpec(only_migratable=True, args=ROOT_PORT + BACKEND), version=version)
    assert (outcome.stage, outcome.error) == (
        "qmp",
        f"disallowing migration blocker (--only-migratable) for: {IVSHMEM_BLOCKER}",
    )
    # blocker-hotplug-then-unplug: device_del without a guest never completes, the blocker stays.
    outcome = run(
        ivshmem, qmp("device_del", id="iv0"), Step("migrate"), vm=VmSpec(args=ROOT_PORT + BACKEND), version=version
    )
    assert (outcome.stage, outcome.error) == ("migrate", IVSHMEM_BLOCKER)
    # qmp-device-add-memdev-not-found (found by migconform fuzz): object_resolve_link finds no such backend.
    outcome = run(ivshmem, vm=VmSpec(args=ROOT_PORT), version=version)
    assert (outcome.stage, outcome.error) == ("qmp", "Device 'hb0' not found")
    # The link is set after qdev_set_id: a taken id is reported first.
    twice = run(qmp("device_add", driver="virtio-rng-pci", bus="rp0", id="iv0"), ivshmem, vm=VmSpec(args=ROOT_PORT))
    assert twice.error == "Duplicate device ID 'iv0'"


def test_device_add_unmigratable_path() -> None:
    # The hot-added device takes the root port's slot: its idstr follows docs/real-qemu-facts.md#pci-paths.
    outcome = run(qmp("device_add", driver="nvme", serial="n", bus="rp0"), Step("migrate"), vm=VmSpec(args=ROOT_PORT))
    assert outcome.error == "State blocked by non-migratable device '0000:00:01.0:00.0/nvme'"


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_blockdev_add_during_migration(version: str) -> None:
    # blocker-blockdev-add-during-migration: vvfat rw reports its internal qcow node first.
    step = qmp("blockdev-add", driver="vvfat", **{"node-name": "vv0"}, dir="/media", rw=True)
    outcome = run(SLOW, Step("migrate"), step, version=version)
    assert (outcome.stage, outcome.error) == (
        "qmp",
        "disallowing migration blocker (migration/snapshot in progress) for: The qcow format used by node "
        "'#block<N>' does not support live migration",
    )


def test_raw_migrate_uris() -> None:
    # precheck-bad-uri: 10.0.2 refuses before migrate_init (status none); 7.2.22 after it (status failed).
    outcome = run(qmp("migrate", uri="bogus:x"))
    assert (outcome.error, states(outcome)[0]) == ("unknown migration protocol: bogus:x", ("none", "running"))
    outcome = run(qmp("migrate", uri="bogus:x"), version="7.2")
    assert (outcome.error, states(outcome)[0]) == (
        "Parameter 'uri' expects a valid migration protocol",
        ("failed", "running"),
    )
    # fail-file-unwritable (10.0.2): refused@qmp, source failed. The path is the scenario's: predicted literally.
    outcome = run(qmp("migrate", uri="file:/nonexistent-migconform/x"), Step("wait"))
    assert (outcome.stage, outcome.error, states(outcome)[0]) == (
        "qmp",
        "Could not create '/nonexistent-migconform/x': No such file or directory",
        ("failed", "running"),
    )
    # fail-unix-no-listener (both): accepted, then the connect fails.
    for version in ("10.0", "7.2"):
        outcome = run(qmp("migrate", uri="unix:/nonexistent-migconform/sock"), Step("wait"), version=version)
        assert (outcome.verdict, outcome.error) == (
            "failed",
            "Failed to connect to '/nonexistent-migconform/sock': No such file or directory",
        )


@pytest.mark.parametrize(("version", "status", "events"), [("10.0", "setup", []), ("7.2", "none", ["setup"])])
def test_raw_migrate_incoming(version: str, status: str, events: list[str]) -> None:
    # caps-postcopy-after-incoming: 10.0.2 reads setup, 7.2.22 none but sends the setup event anyway.
    incoming = qmp("migrate-incoming", side="destination", uri="tcp:127.0.0.1:0")
    outcome = run(
        incoming, Step("set-capabilities", side="destination", capabilities={"postcopy-ram": True}), version=version
    )
    assert outcome.verdict == "completed"
    assert states(outcome)[1] == (status, "inmigrate")
    assert outcome.events is not None and outcome.events["destination"] == events
    # caps-multifd-after-incoming (10.0.2): refused.
    outcome = run(
        incoming, Step("set-capabilities", side="destination", capabilities={"multifd": True}), version=version
    )
    expected = "Multifd must be set before incoming starts" if version == "10.0" else None
    assert outcome.error == expected


def test_running_migration_reads_active() -> None:
    # precheck-running / caps-during-migration: the executor waits until the migration left setup.
    outcome = run(SLOW, Step("migrate"), Step("migrate"))
    assert (outcome.error, states(outcome)) == (
        "There's a migration process in progress",
        (("active", "running"), ("active", "inmigrate")),
    )


@pytest.mark.parametrize("version", ["10.0", "7.2"])
@pytest.mark.parametrize(
    ("source", "destination"),
    [
        (VmSpec(memory="64M"), VmSpec(memory="128M")),  # precopy-memory-mismatch
        (VmSpec(args=("-device", "virtio-rng-pci")), VmSpec()),  # precopy-device-mismatch
        (VmSpec(), VmSpec(args=("-device", "nvme,serial=n0"))),  # unmigratable-savevm-load-destination
    ],
)
def test_destination_cannot_load(version: str, source: VmSpec, destination: VmSpec) -> None:
    scenario = Scenario("t", source=source, destination=destination, migration=MigrationSpec(transport="exec"))
    outcome = predict(scenario, version, HOST)
    assert (outcome.verdict, outcome.error) == (
        "failed",
        "destination QEMU exited with status 1: load of migration failed: Invalid argument",
    )
    assert states(outcome) == (("completed", "postmigrate"), None)


def test_same_config_loads() -> None:
    vm = VmSpec(memory="64M", args=("-device", "virtio-rng-pci"))
    scenario = Scenario(
        "t", source=vm, destination=VmSpec(memory="65536K", args=vm.args), migration=MigrationSpec(transport="exec")
    )
    assert predict(scenario, "10.0", HOST).verdict == "completed"


@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_snapshot_device_check_before_in_progress(version: str) -> None:
    # snapshot-save-during-migration (both): no disk -> the device error, not "migration in progress".
    outcome = run(SLOW, Step("migrate"), Step("snapshot-save"), version=version)
    assert outcome.error == "At least one device is required for snapshot"


def test_loader_accepts_migrate_continue() -> None:
    # docs/scenario-format.md: the extension action migrate-continue takes no keys besides action and side.
    from harness.scenario_error import ScenarioError
    from harness.scenario_tables import parse_scenario

    scenario = parse_scenario({"step": [{"action": "migrate-continue"}]}, "x.toml", "x")
    assert scenario.steps[0].action == "migrate-continue"
    with pytest.raises(ScenarioError):
        parse_scenario({"step": [{"action": "migrate-continue", "state": "pre-switchover"}]}, "x.toml", "x")


def test_migrate_continue_without_parked_migration() -> None:
    # docs/real-qemu-facts.md#cancel--failure: migrate-continue with no migration (both versions).
    outcome = run(Step("migrate-continue"))
    assert (outcome.stage, outcome.error) == ("migrate-continue", "Migration not in expected state: none")
