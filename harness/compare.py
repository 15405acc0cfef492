"""Comparing the model's outcome with real QEMU's.

The record keeps QEMU's messages exactly as printed (contract); only the comparison normalises the parts
that depend on the host rather than on QEMU's logic: the VFIO device's host name (its host PCI address or
mdev UUID), other UUIDs, the run's temporary file paths and TCP ports. The model writes ``<device-id>`` where
QEMU prints a VFIO device's host name (reference_impl/vfio/api.py), so the host names the executor allocated
(``Outcome.extra["vfio_names"]``) are mapped to the same placeholders before the generic patterns run.

A guest-side PCI address (the q35 slot QEMU assigns an emulated device, e.g. the "0000:00:01.0" of
"0000:00:01.0/nvme") is QEMU's logic, which the model predicts (reference_impl/machine.py): it is compared
literally, never replaced by a placeholder, so a model that predicts another slot diverges. Likewise a path the
model wrote literally (a scenario's own URI, e.g. "file:/nonexistent-migconform/x") is kept on both sides: only
the paths the model could not know (the run's temporary files, host devices) become ``<path>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.messages import without_wait_bound
from contract.outcome import Outcome, VmState

CONTRACT_FIELDS = (
    "verdict",
    "stage",
    "error",
    "source.status",
    "source.runstate",
    "destination.status",
    "destination.runstate",
)
# Extensions compared only when both backends produced them.
EXTENSION_FIELDS = ("events", "guest")
# Compared whenever the model predicted it (not null): QEMU's side is then what the executor recorded, and
# a run in which QEMU sent no VFIO_MIGRATION event has none recorded (null, the same as {}). The model leaves
# it null, with extra["vfio_states_unpredicted"] saying why, where it does not follow the run
# (reference_impl.vfio.events): then the field is left out for that item.
PREDICTED_FIELDS = ("vfio_states",)

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
# host:port after an IPv4 address, localhost or a bracketed IPv6 address
_PORT = re.compile(r"((?:\d{1,3}\.){3}\d{1,3}|localhost|\[[0-9a-fA-F:.]*\]):\d{1,5}\b")
_AUTO_NODE = re.compile(r"#block\d+")
# An absolute path with at least two components, not glued to a word or a placeholder.
_PATH = re.compile(r"(?<![\w<>.~/-])/[\w.+-]+(?:/[\w.+@-]*)+")
# A destination that drops the connection mid-stream makes the source's next write fail with EPIPE or
# ECONNRESET depending on timing (both seen on 10.0.2 and 7.2.22 for the same scenario, docs/qemu-bugs.md):
# one text for both.
_PEER_GONE = re.compile(r"Unable to write to socket: (?:Broken pipe|Connection reset by peer)")


def literal_paths(text: str | None) -> tuple[str, ...]:
    """The absolute paths in ``text`` (the model's prediction): what :func:`normalise` must keep."""
    return tuple(_PATH.findall(text)) if text else ()


def normalise(
    text: str | None,
    vfio_names: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    keep_paths: Iterable[str] = (),
) -> str | None:
    """``text`` with host-specific parts replaced by placeholders (identity for None).

    ``vfio_names`` maps device ids to host names (pairs, when one id has a host name on each side).
    ``keep_paths``: paths compared literally (those the model predicted), not replaced by ``<path>``.
    """
    if text is None:
        return None
    # Shield the kept paths from every pattern (a NUL never occurs in QEMU's messages).
    kept = sorted(set(keep_paths), key=len, reverse=True)
    for index, path in enumerate(kept):
        text = text.replace(path, f"\0{index}\0")
    pairs = list(vfio_names.items()) if isinstance(vfio_names, Mapping) else list(vfio_names or ())
    # Longest host names first, so that a name that is a prefix of another is not replaced inside it.
    for device_id, host_name in sorted(pairs, key=lambda item: -len(item[1])):
        if host_name:
            text = text.replace(host_name, f"<{device_id}>")
    # Auto-generated block node names ("#block123") change from run to run (reference_impl.catalog).
    text = _AUTO_NODE.sub("#block<N>", text)
    text = _UUID.sub("<uuid>", text)
    text = _PORT.sub(r"\1:<port>", text)
    text = _PATH.sub("<path>", text)
    # The executor's wait bound is a run option (--timeout), not QEMU's behaviour.
    text = without_wait_bound(text)
    text = _PEER_GONE.sub("Unable to write to socket: <peer gone>", text)
    for index, path in enumerate(kept):
        text = text.replace(f"\0{index}\0", path)
    return text


@dataclass
class Comparison:
    """One scenario on one QEMU version: ``differences`` maps a field to ``[reference, qemu]``."""

    scenario: str
    qemu_version: str
    agree: bool
    differences: dict[str, list[Any]] = field(default_factory=dict)
    # extension: the report column when two binaries share a version (e.g. a mutant build)
    column: str | None = None
    # extension: the documented QEMU bug (harness.known_bugs) that explains this divergence
    known_bug: str | None = None
    # extension: this case is a known QEMU bug's (harness.known_bugs) but now agrees: the bug no longer
    # reproduces (a fixed QEMU, or a check that no longer sees it), so its entry has to go
    known_bug_gone: str | None = None

    @property
    def diverges(self) -> bool:
        """A divergence no known QEMU bug explains."""
        return not self.agree and self.known_bug is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "qemu_version": self.qemu_version,
            "agree": self.agree,
            "differences": self.differences,
        }
        if self.column is not None and self.column != self.qemu_version:
            out["column"] = self.column
        if self.known_bug is not None:
            out["known_bug"] = self.known_bug
        if self.known_bug_gone is not None:
            out["known_bug_gone"] = self.known_bug_gone
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            scenario=str(data["scenario"]),
            qemu_version=str(data["qemu_version"]),
            agree=bool(data["agree"]),
            differences={str(k): list(v) for k, v in dict(data.get("differences") or {}).items()},
            column=data.get("column"),
            known_bug=data.get("known_bug"),
            known_bug_gone=data.get("known_bug_gone"),
        )


def _vm_field(state: VmState | None, name: str) -> str | None:
    return None if state is None else str(getattr(state, name))


def _field_value(
    outcome: Outcome, name: str, vfio_names: list[tuple[str, str]] | None, keep_paths: tuple[str, ...] = ()
) -> Any:
    if name == "error":
        return normalise(outcome.error, vfio_names, keep_paths)
    if "." in name:
        side, attr = name.split(".", 1)
        return _vm_field(outcome.source if side == "source" else outcome.destination, attr)
    return getattr(outcome, name)


def _without_empty(value: Any) -> Any:
    """``{"source": [...], "destination": []}`` and ``{"source": [...]}`` say the same: no events there."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v not in ([], {}, None)}
    return value


# Of Outcome.guest, what a correct QEMU determines: whether the guest answers and how many pages are wrong.
# pages_checked (the workload's size) and first_bad (which page) are informative.
GUEST_COMPARED = ("alive", "bad_pages")


def _guest_verdict(guest: Any) -> Any:
    if not isinstance(guest, dict):
        return guest
    return {key: guest.get(key) for key in GUEST_COMPARED}


def skip_reason(reference: Outcome, qemu: Outcome) -> str | None:
    """Why this pair is not compared, or None when it is."""
    if qemu.verdict == "skipped":
        return f"qemu: {qemu.skip_reason or 'skipped'}"
    if reference.verdict == "skipped":
        return f"reference: {reference.skip_reason or 'skipped'}"
    return None


def compare(reference: Outcome, qemu: Outcome, column: str | None = None) -> Comparison:
    """Compare the contract's fields (after normalisation) and the extensions both sides have.

    Callers check :func:`skip_reason` first: a skipped side has nothing to compare.
    """
    # Each QEMU launch gets its own host device, so the destination's names differ from the source's.
    vfio_names = [
        (str(device_id), str(host_name))
        for key in ("vfio_names", "vfio_names_destination")
        for device_id, host_name in dict(qemu.extra.get(key) or {}).items()
    ]
    keep = literal_paths(reference.error)
    differences: dict[str, list[Any]] = {}
    for name in CONTRACT_FIELDS:
        ref_value = _field_value(reference, name, None, keep)
        qemu_value = _field_value(qemu, name, vfio_names, keep)
        if ref_value != qemu_value:
            differences[name] = [ref_value, qemu_value]
    for name in PREDICTED_FIELDS:
        predicted = _without_empty(getattr(reference, name))
        if predicted is not None:
            recorded = _without_empty(getattr(qemu, name) or {})
            if predicted != recorded:
                differences[name] = [predicted, recorded]
    for name in EXTENSION_FIELDS:
        ref_ext = _without_empty(getattr(reference, name))
        qemu_ext = _without_empty(getattr(qemu, name))
        # The guest's informative keys are shown in a difference but do not make one.
        compared = (_guest_verdict(ref_ext), _guest_verdict(qemu_ext)) if name == "guest" else (ref_ext, qemu_ext)
        if ref_ext is not None and qemu_ext is not None and compared[0] != compared[1]:
            differences[name] = [ref_ext, qemu_ext]
    return Comparison(
        scenario=qemu.scenario,
        qemu_version=qemu.qemu_version,
        agree=not differences,
        differences=differences,
        column=column,
    )
