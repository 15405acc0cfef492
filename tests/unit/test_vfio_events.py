"""``vfio_states``: the model predicts the VFIO_MIGRATION sequences (reference_impl.vfio.events) and the
comparison checks them.

The expected sequences follow QEMU 10.0's hw/vfio/migration.c (vfio_migration_set_state,
vfio_vmstate_change_prepare, vfio_vmstate_change, vfio_save_setup, vfio_save_complete_precopy,
vfio_save_cleanup, vfio_load_setup) with the kernel FSM's arcs; the mtty lab confirms them on 10.0.2
(tests/hw/test_mtty_lab.py runs the same scenarios there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario
from harness.compare import compare
from harness.loader import load_scenario
from harness.suite import SUITE_DIR
from reference_impl.predict import VFIO_UNPREDICTED, predict

SUITE = SUITE_DIR
LAB = HostFacts(userfaultfd=True, uffd_wp=True, kvm=False, vfio_dirty_report_works=False, kernel="6.12")
DEVICE = '[[vm.device]]\ndriver = "vfio-pci"\nid = "vfio0"\npersonality = "migratable"\n'
EVENTS_ON = 'properties = { x-device-dirty-page-tracking = "off", enable-migration = "on", migration-events = "on" }\n'


def _suite(name: str) -> Scenario:
    return load_scenario(SUITE / f"{name}.toml")


def _scenario(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "s.toml"
    path.write_text('requires = ["vfio"]\n[vm]\nmemory = "64M"\n' + text)
    return load_scenario(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "vfio-events-precopy",
            {
                "vfio0": ["pre-copy", "pre-copy-p2p", "stop-copy", "stop"],
                "destination:vfio0": ["resuming", "running-p2p", "running"],
            },
        ),
        (
            "vfio-events-paused-precopy",
            {"vfio0": ["running-p2p", "stop", "stop-copy", "stop"], "destination:vfio0": ["resuming"]},
        ),
        (
            "vfio-events-stop-cont",
            {
                "vfio0": [
                    *("running-p2p", "stop", "running-p2p", "running"),
                    *("pre-copy", "pre-copy-p2p", "stop-copy", "stop"),
                ],
                "destination:vfio0": ["resuming", "running-p2p", "running"],
            },
        ),
        (
            "vfio-events-no-precopy",
            {
                "vfio0": ["running-p2p", "stop", "stop-copy", "stop"],
                "destination:vfio0": ["resuming", "running-p2p", "running"],
            },
        ),
        ("vfio-events-postcopy-refused", {}),
    ],
)
def test_sequences_on_10_0(name: str, expected: dict[str, list[str]]) -> None:
    outcome = predict(_suite(name), "10.0", LAB)
    assert outcome.vfio_states == expected
    assert VFIO_UNPREDICTED not in outcome.extra


def test_a_device_without_events_sends_none() -> None:
    """Every VFIO scenario gets a prediction; without migration-events=on it is "no event at all"."""
    for name in ("vfio-precopy-migratable", "vfio-dirty-tracking-off-on", "vfio-postcopy-migratable"):
        outcome = predict(_suite(name), "10.0", LAB)
        assert outcome.vfio_states == {}, name


def test_7_2_has_no_events() -> None:
    """7.2 has neither migration-events nor the v2 protocol: the property refuses startup, no events."""
    outcome = predict(_suite("vfio-events-postcopy-refused"), "7.2", LAB)
    assert (outcome.verdict, outcome.stage) == ("refused", "startup")
    assert outcome.vfio_states == {}


def test_unnamed_device_is_keyed_by_its_empty_qdev_id(tmp_path: Path) -> None:
    """vfio_migration_send_event sends dev->id, which is NULL (the empty string on the wire) without id=."""
    text = DEVICE.replace('id = "vfio0"\n', "") + EVENTS_ON + '[migration]\ntransport = "unix"\n'
    outcome = predict(_scenario(tmp_path, text), "10.0", LAB)
    assert outcome.vfio_states == {
        "": ["pre-copy", "pre-copy-p2p", "stop-copy", "stop"],
        "destination:": ["resuming", "running-p2p", "running"],
    }


def test_a_path_without_rules_is_not_predicted(tmp_path: Path) -> None:
    """A migration that fails (the stock lab's DMA-logging report) leaves vfio_states null, with the reason;
    the same device without events is still predicted as "none"."""
    events = DEVICE + 'properties = { migration-events = "on" }\n[migration]\ntransport = "unix"\n'
    outcome = predict(_scenario(tmp_path, events), "10.0", LAB)
    assert outcome.verdict == "failed"
    assert outcome.vfio_states is None
    assert "fails" in outcome.extra[VFIO_UNPREDICTED]
    slow = '[[step]]\naction = "set-parameters"\nparameters = { max-bandwidth = 1000 }\n'
    cancel = (
        DEVICE + EVENTS_ON + slow + '[[step]]\naction = "migrate"\ntransport = "unix"\n[[step]]\naction = "cancel"\n'
    )
    outcome = predict(_scenario(tmp_path, cancel), "10.0", LAB)
    assert outcome.vfio_states is None and "cancel" in outcome.extra[VFIO_UNPREDICTED]


def _qemu(states: dict[str, list[str]] | None) -> Outcome:
    return Outcome("s", "qemu", "10.0.2", "completed", vfio_states=states)


def _model(states: dict[str, list[str]] | None) -> Outcome:
    return Outcome("s", "reference", "10.0.2", "completed", vfio_states=states)


def test_a_wrong_sequence_diverges() -> None:
    real = {"vfio0": ["pre-copy", "pre-copy-p2p", "stop-copy", "stop"]}
    assert compare(_model(real), _qemu(real)).agree
    wrong = {"vfio0": ["pre-copy", "stop-copy", "pre-copy-p2p", "stop"]}
    comparison = compare(_model(wrong), _qemu(real))
    assert not comparison.agree
    assert comparison.differences["vfio_states"] == [wrong, real]


def test_predicted_events_qemu_never_sent_diverge() -> None:
    """The executor records nothing when QEMU sent no event: null on QEMU's side is "no events"."""
    predicted = {"destination:vfio0": ["resuming"]}
    assert compare(_model(predicted), _qemu(None)).differences["vfio_states"] == [predicted, {}]
    assert compare(_model({}), _qemu(None)).agree
    assert not compare(_model({}), _qemu({"vfio0": ["stop"]})).agree


def test_an_unpredicted_sequence_is_left_out() -> None:
    assert compare(_model(None), _qemu({"vfio0": ["stop"]})).agree
