"""Core migration corners found by scenarios written blind (harness/suite/core-*.toml): URI address parsing,
fd: names, raw migrates whose connect fails, dump-guest-memory during a migration, i440fx slots, USB unplug,
10.2's destination postcopy-device, device properties checked before realize.

Expected values are real QEMU answers: `migconform run scratch --qemu 7.2 --qemu 10.0 --qemu 10.2 --repeat 3`
on 2026-12-03 (7.2.22, 10.0.2, 10.2.2); docs/real-qemu-facts.md "Core corners".
"""

from __future__ import annotations

import pytest
from model_steps import qmp, refusal

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario, Step, VmSpec
from reference_impl import predict, uri_parse
from reference_impl.limits import NotModelled

HOST = HostFacts()
VERSIONS = ("7.2", "10.0", "10.2")
SLOW = Step("set-parameters", parameters={"max-bandwidth": 1000})
MIGRATE = Step("migrate", transport="tcp")
EVENTS = Step("set-capabilities", capabilities={"events": True})


def run(
    *items: Step,
    version: str = "10.0",
    source: VmSpec | None = None,
    memory: str = "64M",
    destination: VmSpec | None = None,
) -> Outcome:
    """Both sides alike (a scenario's [vm]) unless ``destination`` says otherwise."""
    vm = VmSpec(memory=memory)
    scenario = Scenario("t", source=source or vm, destination=destination or source or vm, steps=items)
    return predict(scenario, version, HOST)


@pytest.mark.parametrize("version", VERSIONS)
def test_incoming_address_refused_by_its_parser(version: str) -> None:
    # core-incoming-tcp-no-port, core-incoming-unix-empty: 10.x refuses in migrate_uri_parse (status none).
    for uri, text in (("tcp:127.0.0.1", "error parsing address '127.0.0.1'"), ("unix:", "invalid Unix socket address")):
        outcome = run(qmp("migrate-incoming", "destination", uri=uri), version=version)
        assert refusal(outcome) == ("refused", "qmp", text)
        assert outcome.destination is not None and outcome.destination.status == "none"


def test_outgoing_address_refused_before_or_after_migrate_init() -> None:
    # core-migrate-tcp-no-port: 7.2 parses inside socket_start_outgoing_migration (setup -> failed).
    step = qmp("migrate", uri="tcp:localhost")
    old = run(EVENTS, step, version="7.2")
    assert refusal(old) == ("refused", "qmp", "error parsing address 'localhost'")
    assert old.source is not None and old.source.status == "failed"
    assert old.events is not None and old.events["source"] == ["setup", "failed"]
    new = run(EVENTS, step, version="10.2")
    assert new.source is not None and new.source.status == "none"


@pytest.mark.parametrize("version", VERSIONS)
def test_fd_names_are_never_found(version: str) -> None:
    # core-fd-unknown-name, core-incoming-fd-unknown-name: no getfd ever ran.
    text = "File descriptor named 'nosuchfd' has not been found"
    outcome = run(EVENTS, qmp("migrate", uri="fd:nosuchfd"), version=version)
    assert refusal(outcome) == ("refused", "qmp", text)
    assert outcome.events is not None and outcome.events["source"] == ["setup", "failed"]
    incoming = run(qmp("migrate-incoming", "destination", uri="fd:nosuchfd"), version=version)
    assert refusal(incoming) == ("refused", "qmp", text)
    assert incoming.destination is not None
    assert incoming.destination.status == ("none" if version == "7.2" else "setup")


def test_empty_fd_name_differs_by_version() -> None:
    # core-incoming-fd-empty: 10.x socket_parse refuses "fd:"; 7.2 looks the empty name up.
    step = qmp("migrate-incoming", "destination", uri="fd:")
    assert run(step, version="10.0").error == "invalid file descriptor address"
    assert run(step, version="7.2").error == "File descriptor named '' has not been found"
    with pytest.raises(NotModelled):
        uri_parse.fd_lookup_error("3")


@pytest.mark.parametrize("version", VERSIONS)
def test_raw_migrate_to_nobody_fails_by_the_final_read(version: str) -> None:
    # core-stop-then-failed-migrate; a second migrate right after it races the connect callback (2 of 3 accepted).
    again = run(EVENTS, qmp("migrate", uri="tcp:127.0.0.1:1"), MIGRATE, Step("wait"), version=version)
    assert again.verdict == "skipped" and again.not_modelled is not None and "asynchronously" in again.not_modelled
    paused = run(Step("stop"), qmp("migrate", uri="tcp:127.0.0.1:1"), version=version)
    assert (paused.verdict, paused.stage) == ("failed", "migration")
    assert paused.error == "Failed to connect to '127.0.0.1:<port>': Connection refused"
    assert paused.source is not None and (paused.source.status, paused.source.runstate) == ("failed", "paused")
    assert paused.events is None or paused.events.get("source", []) == []


def test_file_uri_offset() -> None:
    # core-migrate-file-bad-offset, core-migrate-file-offset-devnull (10.x only).
    assert uri_parse.file_offset("/x,offset=0x1000") == ("/x", 4096, None)
    assert uri_parse.file_offset("/x,offset=2k") == ("/x", 2048, None)
    assert uri_parse.file_offset("/x,offset=abc")[2] == "file URI has bad offset abc: Invalid argument"
    bad = run(qmp("migrate", uri="file:/dev/null,offset=abc"), version="10.0")
    assert refusal(bad) == ("refused", "qmp", "file URI has bad offset abc: Invalid argument")
    devnull = run(qmp("migrate", uri="file:/dev/null,offset=0x1000"), Step("wait"), version="10.2")
    assert refusal(devnull) == ("refused", "qmp", "failed to truncate migration file to offset 1000: Invalid argument")


@pytest.mark.parametrize("version", VERSIONS)
def test_dump_takes_the_internal_blocker(version: str) -> None:
    # core-dump-during-migration, core-dump-after-completed.
    dump = qmp("dump-guest-memory", paging=False, protocol="file:/dev/null")
    busy = run(SLOW, MIGRATE, dump, version=version, memory="1G")
    text = "disallowing migration blocker (migration/snapshot in progress) for: "
    assert refusal(busy) == ("refused", "qmp", text + "Live migration disabled: dump-guest-memory in progress")
    assert run(MIGRATE, Step("wait"), dump, version=version).verdict == "completed"
    fd = run(qmp("dump-guest-memory", paging=False, protocol="fd:x"), version=version)
    assert fd.verdict == "skipped" and fd.not_modelled is not None


@pytest.mark.parametrize("version", VERSIONS)
def test_i440fx_slots_start_at_2(version: str) -> None:
    # core-nvme-pc-machine, core-nvme-hotplug-pc, core-intel-iommu-on-pc.
    blocked = "State blocked by non-migratable device '0000:00:02.0/nvme'"
    pc = VmSpec(memory="64M", machine="pc", args=("-device", "nvme,serial=n0"))
    assert run(MIGRATE, version=version, source=pc).error == blocked
    hot = run(
        qmp("device_add", driver="nvme", serial="n0", id="nv0"),
        MIGRATE,
        version=version,
        source=VmSpec(memory="64M", machine="pc"),
    )
    assert hot.error == blocked
    iommu = VmSpec(memory="64M", machine="pc", args=("-device", "intel-iommu"))
    expected = ("refused", "startup", "Parameter 'driver' expects a dynamic sysbus device type for the machine")
    assert refusal(run(MIGRATE, version=version, source=iommu)) == expected


@pytest.mark.parametrize("version", VERSIONS)
def test_usb_unplug_is_synchronous(version: str) -> None:
    # core-usb-wacom-hotplug-unplug-migrates.
    xhci = VmSpec(memory="64M", args=("-device", "qemu-xhci,id=xhci"))
    add = qmp("device_add", driver="usb-wacom-tablet", id="tab0", bus="xhci.0")
    assert (
        run(add, qmp("device_del", id="tab0"), MIGRATE, Step("wait"), version=version, source=xhci).verdict
        == "completed"
    )
    assert (
        run(add, MIGRATE, version=version, source=xhci).error
        == "State blocked by non-migratable device '0000:00:01.0/1/usb-wacom'"
    )


def test_chardev_property_checked_before_only_migratable() -> None:
    # core-usb-serial-missing-chardev.
    vm = VmSpec(memory="64M", only_migratable=True, args=("-device", "qemu-xhci,id=xhci"))
    step = qmp("device_add", driver="usb-serial", id="ser0", bus="xhci.0", chardev="nope")
    assert run(step, source=vm).error == "Property 'usb-serial.chardev' can't find value 'nope'"


@pytest.mark.parametrize(("version", "device"), [("10.2", True), ("10.0", False)])
def test_destination_postcopy_device_on_10_2(version: str, device: bool) -> None:
    # core-postcopy-events-both: 10.2 postcopy_listen_thread passes postcopy-device with a return path.
    caps = Step("set-capabilities", side="both", capabilities={"postcopy-ram": True, "events": True})
    pace = Step("set-parameters", parameters={"max-bandwidth": 200000})
    outcome = run(caps, pace, MIGRATE, Step("start-postcopy"), Step("wait"), version=version)
    assert outcome.events is not None
    assert ("postcopy-device" in outcome.events["destination"]) is device


def test_ignore_shared_backend_ram_is_not_modelled() -> None:
    # core corner left out: 7.2.22 failed or completed depending on how far the firmware ran.
    vm = VmSpec(
        memory="64M", args=("-object", "memory-backend-memfd,id=m0,size=64M,share=on", "-machine", "memory-backend=m0")
    )
    caps = Step("set-capabilities", side="both", capabilities={"x-ignore-shared": True})
    outcome = run(caps, Step("migrate", transport="exec"), Step("wait"), version="7.2", source=vm)
    assert outcome.verdict == "skipped" and outcome.not_modelled is not None


VVFAT = VmSpec(memory="64M", args=("-drive", "if=none,id=d0,driver=vvfat,dir=/media,rw=on"))
CPR = (Step("stop"), Step("set-parameters", parameters={"mode": "cpr-reboot"}), Step("migrate", transport="file"))


@pytest.mark.parametrize("version", VERSIONS)
def test_drive_driver_option_is_the_format(version: str) -> None:
    # core-vvfat-drive-driver: -drive driver=vvfat,rw=on blocks like format=vvfat / fat:rw:.
    text = "The vvfat (rw) format used by node '#block<N>' does not support live migration"
    assert refusal(run(MIGRATE, version=version, source=VVFAT)) == ("refused", "migrate", text)


@pytest.mark.parametrize("version", ["10.0", "10.2"])
def test_cpr_mode_skips_format_blockers_then_fails_inactivating(version: str) -> None:
    # core-cpr-reboot-vvfat: migrate_add_blocker_normal, then migration_block_inactivate fails (-EFAULT).
    outcome = run(*CPR, Step("wait"), version=version, source=VVFAT)
    assert refusal(outcome) == ("failed", "migration", "Error in migration completion: Bad address")
    assert outcome.source is not None and (outcome.source.status, outcome.source.runstate) == ("failed", "paused")
    assert run(*CPR, Step("wait"), version=version).verdict == "completed"


BUS = "Bus 'pcie.0' does not support hotplugging"
RNG = {"driver": "virtio-rng-pci", "id": "rng0"}


@pytest.mark.parametrize(("version", "during"), [("7.2", BUS), ("10.0", "device_add not allowed while migrating")])
def test_pcie0_takes_no_hotplug(version: str, during: str) -> None:
    # core-device-add-pcie0-no-hotplug, core-device-add-pcie0-during-migration.
    assert run(qmp("device_add", "destination", **RNG), version=version).error == BUS
    assert run(SLOW, MIGRATE, qmp("device_add", **RNG), version=version, memory="1G").error == during
    pc = VmSpec(memory="64M", machine="pc")
    assert run(qmp("device_add", **RNG), version=version, source=pc).verdict == "completed"


@pytest.mark.parametrize("version", VERSIONS)
def test_destination_announces_active_once(version: str) -> None:
    # core-pause-before-switchover-events.
    both = Step("set-capabilities", side="both", capabilities={"events": True})
    pause = Step("set-capabilities", capabilities={"pause-before-switchover": True})
    outcome = run(both, pause, MIGRATE, Step("wait"), Step("migrate-continue"), Step("wait"), version=version)
    assert outcome.events is not None and outcome.events["destination"] == ["setup", "active", "completed"]


@pytest.mark.parametrize("version", VERSIONS)
def test_destination_takes_the_runstate_at_the_switchover(version: str) -> None:
    # core-prelaunch-cont-during-migration.
    prelaunch, plain = VmSpec(memory="1G", args=("-S",)), VmSpec(memory="1G")
    fast = Step("set-parameters", parameters={"max-bandwidth": 0})
    outcome = run(SLOW, MIGRATE, Step("cont"), fast, Step("wait"), version=version, source=prelaunch, destination=plain)
    assert outcome.destination is not None and outcome.destination.runstate == "running"
    still = run(MIGRATE, Step("wait"), version=version, source=prelaunch, destination=plain)
    assert still.destination is not None and still.destination.runstate == "prelaunch"


def test_configuration_mismatch_over_a_socket_is_not_modelled() -> None:
    # nvme on the destination only, over tcp: the source failed 4 of 5, completed 1 of 5 (7.2.22, 10.2.2).
    scenario = Scenario(
        "t",
        source=VmSpec(memory="64M"),
        destination=VmSpec(memory="64M", args=("-device", "nvme,serial=n0")),
        steps=(MIGRATE, Step("wait")),
    )
    outcome = predict(scenario, "10.0", HOST)
    assert outcome.verdict == "skipped" and outcome.not_modelled is not None and "socket" in outcome.not_modelled
    exec_scenario = Scenario(
        scenario.id,
        source=scenario.source,
        destination=scenario.destination,
        steps=(Step("migrate", transport="exec"), Step("wait")),
    )
    assert predict(exec_scenario, "10.0", HOST).verdict == "failed"


@pytest.mark.parametrize("version", VERSIONS)
def test_i440fx_unplug_waits_for_the_guest(version: str) -> None:
    # core-pc-nvme-hotplug-del: ACPI unplug is a request; the blocker stays.
    pc = VmSpec(memory="64M", machine="pc")
    add = qmp("device_add", driver="nvme", serial="n0", id="nv0")
    outcome = run(add, qmp("device_del", id="nv0"), MIGRATE, version=version, source=pc)
    assert outcome.error == "State blocked by non-migratable device '0000:00:02.0/nvme'"


@pytest.mark.parametrize("version", VERSIONS)
def test_stop_during_precopy_hands_over_paused(version: str) -> None:
    # core-stop-during-migration-then-wait.
    fast = Step("set-parameters", parameters={"max-bandwidth": 0})
    outcome = run(SLOW, MIGRATE, Step("stop"), fast, Step("wait"), version=version, memory="1G")
    assert outcome.destination is not None and outcome.destination.runstate == "paused"


@pytest.mark.parametrize("version", VERSIONS)
def test_usb_device_goes_to_the_newest_controller(version: str) -> None:
    # core-two-usb-controllers-newest.
    args = (
        "-chardev",
        "null,id=s0",
        "-device",
        "ich9-usb-uhci1",
        "-device",
        "qemu-xhci",
        "-device",
        "usb-serial,chardev=s0",
    )
    outcome = run(MIGRATE, version=version, source=VmSpec(memory="64M", args=args))
    assert outcome.error == "State blocked by non-migratable device '0000:00:02.0/1/usb-serial'"


@pytest.mark.parametrize(("version", "section"), [("10.2", 2), ("10.0", None), ("7.2", None)])
def test_command_line_vdagent_section_comes_before_ram(version: str, section: int | None) -> None:
    # core-vdagent-removed-then-cancel: the destination's footer error names RAM's section id on 10.2.
    vm = VmSpec(memory="1G", args=("-chardev", "qemu-vdagent,id=vd0"))
    remove = qmp("chardev-remove", id="vd0")
    outcome = run(SLOW, remove, MIGRATE, Step("cancel"), version=version, source=vm)
    assert outcome.error is not None
    assert outcome.error.endswith(f"section_id: {section}") if section else outcome.error.endswith("Invalid argument")
