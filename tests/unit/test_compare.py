"""Comparison: host-specific normalisation, the compared fields, extensions, and skips."""

from __future__ import annotations

from contract.outcome import Outcome, VmState
from harness.compare import compare, normalise, skip_reason

UUID = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"


def outcome(backend: str, **fields: object) -> Outcome:
    base: dict[str, object] = {
        "scenario": "s",
        "backend": backend,
        "qemu_version": "10.0.2",
        "verdict": "refused",
        "stage": "migrate",
        "error": None,
        "source": VmState("none", "running"),
        "destination": VmState("setup", "inmigrate"),
    }
    base.update(fields)
    return Outcome(**base)  # type: ignore[arg-type]


def test_vfio_host_names_become_the_model_placeholders() -> None:
    qemu_error = f"{UUID}: VFIO migration is not supported with postcopy migration"
    assert normalise(qemu_error, {"vfio0": UUID}) == "<vfio0>: VFIO migration is not supported with postcopy migration"
    assert normalise("vfio 0000:3b:00.1: 0000:3b:00.1: x", {"vfio-pci#0": "0000:3b:00.1"}) == (
        "vfio <vfio-pci#0>: <vfio-pci#0>: x"
    )


def test_generic_host_parts() -> None:
    assert normalise(f"{UUID}: gone") == "<uuid>: gone"
    # a guest-side PCI address is QEMU's slot assignment, which the model predicts: kept literally
    assert normalise("State blocked by non-migratable device '0000:00:04.0/nvme'") == (
        "State blocked by non-migratable device '0000:00:04.0/nvme'"
    )
    assert normalise("Failed to connect to '127.0.0.1:40123': Connection refused") == (
        "Failed to connect to '127.0.0.1:<port>': Connection refused"
    )
    assert normalise("Could not open '/tmp/mc-abc/snapshot.bin': No such file") == (
        "Could not open '<path>': No such file"
    )
    assert normalise("file:/tmp/x/y failed") == "file:<path> failed"
    # words with slashes and placeholders are not paths
    assert normalise("(blk/-b, inc/-i) block migration") == "(blk/-b, inc/-i) block migration"
    assert normalise("<vfio0>: x") == "<vfio0>: x"
    assert normalise(None) is None


def test_guest_side_pci_slot_predicted_differently_diverges() -> None:
    # The q35 slot of an emulated device is QEMU's logic (reference_impl/machine.py predicts it): a model that
    # predicts slot 01 where QEMU put the device in slot 02 is wrong, and the comparison must say so.
    ref = outcome("reference", error="State blocked by non-migratable device '0000:00:01.0/nvme'")
    qemu = outcome("qemu", error="State blocked by non-migratable device '0000:00:02.0/nvme'")
    result = compare(ref, qemu)
    assert not result.agree
    assert result.differences == {"error": [ref.error, qemu.error]}
    # the same slot agrees
    assert compare(ref, outcome("qemu", error=ref.error)).agree


def test_a_path_the_model_predicts_is_compared_literally() -> None:
    # A scenario's own URI path is not the host's: the model predicts it, and another path is a divergence.
    ref = outcome("reference", error="Could not create '/nonexistent-migconform/x': No such file or directory")
    assert compare(ref, outcome("qemu", error=ref.error)).agree
    other = outcome("qemu", error="Could not create '/nonexistent-migconform/y': No such file or directory")
    result = compare(ref, other)
    assert not result.agree
    assert result.differences["error"] == [ref.error, "Could not create '<path>': No such file or directory"]
    # where the model wrote the placeholder (a path of the run it cannot know), any path agrees
    placeholder = outcome("reference", error="Failed to connect to '<path>': Connection refused")
    qemu = outcome("qemu", error="Failed to connect to '/tmp/mc-x1/sock': Connection refused")
    assert compare(placeholder, qemu).agree
    assert normalise("open '/a/b' and '/c/d'", keep_paths=["/a/b"]) == "open '/a/b' and '<path>'"


def test_host_vfio_address_is_still_normalised() -> None:
    # A host VFIO device's PCI address is the host's: the executor records it and the model uses a placeholder.
    ref = outcome("reference", error="<vfio0>: VFIO migration is not supported with postcopy migration")
    qemu = outcome("qemu", error="0000:3b:00.1: VFIO migration is not supported with postcopy migration")
    qemu.extra["vfio_names"] = {"vfio0": "0000:3b:00.1"}
    assert compare(ref, qemu).agree


def test_agreement_after_normalisation() -> None:
    ref = outcome("reference", error="<vfio0>: VFIO migration is not supported with background snapshot")
    qemu = outcome("qemu", error=f"{UUID}: VFIO migration is not supported with background snapshot")
    qemu.extra["vfio_names"] = {"vfio0": UUID}
    result = compare(ref, qemu)
    assert result.agree and result.differences == {}
    # the destination's device has its own host name
    qemu.extra = {"vfio_names": {"vfio0": "0000:3b:00.1"}, "vfio_names_destination": {"vfio0": UUID}}
    assert compare(ref, qemu).agree
    assert result.to_json() == {"scenario": "s", "qemu_version": "10.0.2", "agree": True, "differences": {}}


def test_differences_are_reference_then_qemu() -> None:
    ref = outcome("reference", verdict="completed", stage=None, source=VmState("completed", "postmigrate"))
    qemu = outcome("qemu", error="boom", destination=None)
    result = compare(ref, qemu)
    assert not result.agree
    assert result.differences == {
        "verdict": ["completed", "refused"],
        "stage": [None, "migrate"],
        "error": [None, "boom"],
        "source.status": ["completed", "none"],
        "source.runstate": ["postmigrate", "running"],
        "destination.status": ["setup", None],
        "destination.runstate": ["inmigrate", None],
    }


def test_extensions_compared_only_when_both_sides_have_them() -> None:
    ref = outcome("reference", events={"source": ["setup", "active"]}, guest=None)
    qemu = outcome("qemu", events={"source": ["setup", "failed"]}, guest={"alive": True})
    result = compare(ref, qemu)
    assert list(result.differences) == ["events"]
    qemu.events = {"source": ["setup", "active"], "destination": []}
    assert compare(ref, qemu).agree
    qemu.events = None
    assert compare(ref, qemu).agree


def test_skips_are_not_compared() -> None:
    ref = outcome("reference")
    qemu = outcome("qemu", verdict="skipped", skip_reason="requires vfio: no VFIO provider")
    assert skip_reason(ref, qemu) == "qemu: requires vfio: no VFIO provider"
    assert skip_reason(ref, outcome("qemu")) is None
