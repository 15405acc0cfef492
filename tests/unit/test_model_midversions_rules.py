"""device_add's check order, the CPR modes' blockers and a rw vvfat's completion, and where a tcp:/unix: address
is parsed, on the profiles between 7.2 and 10.0, through the bundled scenarios that once said "not modelled"; and
8.1's unknown-scheme error that qmp_migrate never propagates.

The rules were read in each release's source (8.0.0 c1eb2ddf0f80, 8.1.0 7e5a8bb22368, 8.2.0 1600b9f46b1b, 9.0.0
c25df57ae8f9, 9.1.0 fd1952d814da, 9.2's soft freeze daaf51001a13: docs/real-qemu-facts.md, "8.x and 9.x rules:
sources"). No real QEMU of these versions runs here: the expectations are the source's, not measurements.
"""

from __future__ import annotations

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from harness.loader import load_scenario
from harness.suite import SUITE_DIR
from reference_impl import predict

HOST = HostFacts(userfaultfd=True)
MIDDLE = ("8.0", "8.1", "8.2", "9.0", "9.1", "9.2")
BUS = "Bus 'pcie.0' does not support hotplugging"
VVFAT_8X = "qemu_savevm_state_complete_precopy_non_iterable: bdrv_inactivate_all() failed (-1)"


def bundled(name: str, version: str) -> Outcome:
    outcome = predict(load_scenario(SUITE_DIR / f"{name}.toml"), version, HOST)
    assert outcome.not_modelled is None, outcome.not_modelled
    return outcome


@pytest.mark.parametrize("version", ("7.2", *MIDDLE))
def test_device_add_checks_the_bus_before_the_migration_until_10_0(version: str) -> None:
    # qdev_device_add_from_qdict: qbus_is_hotpluggable before migration_is_idle / migration_is_running.
    outcome = bundled("core-device-add-pcie0-during-migration", version)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "qmp", BUS)


def test_device_add_checks_the_migration_first_from_10_0() -> None:
    outcome = bundled("core-device-add-pcie0-during-migration", "10.0")
    assert outcome.error == "device_add not allowed while migrating"


@pytest.mark.parametrize("version", ("8.2", "9.0", "9.1", "9.2"))
def test_cpr_reboot_skips_the_vvfat_blocker_and_fails_in_completion(version: str) -> None:
    # migrate_add_blocker_normal: mode cpr-reboot sees no blocker; bdrv_inactivate_all fails in
    # qemu_savevm_state_complete_precopy_non_iterable, whose error is the first set; the VM gets its runstate back.
    outcome = bundled("core-cpr-reboot-vvfat", version)
    assert (outcome.verdict, outcome.error) == ("failed", VVFAT_8X)
    assert (outcome.source.status, outcome.source.runstate) == ("failed", "paused")


def test_cpr_reboot_vvfat_keeps_10_0_s_completion_error() -> None:
    outcome = bundled("core-cpr-reboot-vvfat", "10.0")
    assert outcome.error == "Error in migration completion: Bad address"


@pytest.mark.parametrize("version", ("7.2", "8.0", "8.1"))
def test_outgoing_address_is_parsed_after_migrate_init_until_8_2(version: str) -> None:
    # socket_start_outgoing_migration's socket_parse, after migrate_prepare: setup -> failed.
    outcome = bundled("core-migrate-tcp-no-port", version)
    assert outcome.error == "error parsing address 'localhost'"
    assert outcome.source.status == "failed"
    assert outcome.events["source"] == ["setup", "failed"]


def test_outgoing_address_is_parsed_first_from_8_2() -> None:
    outcome = bundled("core-migrate-tcp-no-port", "8.2")
    assert (outcome.error, outcome.source.status) == ("error parsing address 'localhost'", "none")


@pytest.mark.parametrize(
    ("name", "error"),
    (
        ("core-incoming-tcp-no-port", "error parsing address '127.0.0.1'"),
        ("core-incoming-unix-empty", "invalid Unix socket address"),
    ),
)
@pytest.mark.parametrize("version", ("7.2", "8.0", "8.1", "8.2"))
def test_incoming_address_parse_and_the_setup_event(name: str, error: str, version: str) -> None:
    # qemu_start_incoming_migration sends MIGRATION setup before socket_start_incoming_migration's socket_parse
    # until 8.1; 8.2's migrate_uri_parse refuses the address before it.
    outcome = bundled(name, version)
    assert (outcome.verdict, outcome.error) == ("refused", error)
    assert outcome.events["destination"] == (["setup"] if version != "8.2" else [])


@pytest.mark.parametrize(
    ("version", "error"), (("8.0", "Parameter 'uri' expects a valid migration protocol"), ("8.1", None))
)
def test_8_1_loses_the_unknown_scheme_error(version: str, error: str | None) -> None:
    # 8.1's qmp_migrate sets the error in a local Error it never propagates: migrate answers success.
    outcome = bundled("precheck-bad-uri", version)
    assert (outcome.error, outcome.source.status) == (error, "failed")
    assert outcome.verdict == ("refused" if error else "failed")
