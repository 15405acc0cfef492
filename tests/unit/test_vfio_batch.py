"""Cross-version VFIO items through the provider's batch (harness.vfio_batch) and the lab's runner
(harness.vfio_lab.inside), with fake providers and a fake executor (real lab: harness/suite/cross/cross-vfio-*
in `migconform run ... --cross --vfio-provider mtty`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome, VmState
from contract.scenario import DeviceSpec, Scenario, VmSpec
from contract.versions import Version
from harness.binaries import QemuBinary
from harness.cross_targets import PairPlan, plan_items
from harness.runner import RunOptions, run_sync
from harness.targets import targets_for_binaries
from harness.vfio_lab import inside

BIN10 = QemuBinary(path="/fake/qemu-10", version=Version(10, 0, 2), version_text="10.0.2")
BIN102 = QemuBinary(path="/fake/qemu-102", version=Version(10, 2, 2), version_text="10.2.2")
VFIO = VmSpec(devices=(DeviceSpec("vfio-pci", id="vfio0"),))


def _outcome(scenario: str, binary: QemuBinary, destination: QemuBinary | None = None) -> Outcome:
    out = Outcome(scenario, "qemu", str(binary.version), "completed", binary=binary.path,
                  source=VmState("completed", "postmigrate"), destination=VmState("completed", "running"))  # fmt: skip
    if destination is not None:
        out.destination_qemu_version = str(destination.version)
        out.extra["destination_binary"] = destination.path
    return out


class _Lab:
    """A provider that records its calls and answers every item completed."""

    name = "fake-lab"

    def __init__(self, runs_pairs: bool) -> None:
        self.runs_pairs = runs_pairs
        self.calls: list[tuple[list[str], list[str], list[tuple[str, str, str]]]] = []

    async def run_batch(
        self, scenarios: Sequence[Scenario], binaries: Sequence[QemuBinary], **kw: Any
    ) -> list[Outcome]:
        pairs: Sequence[tuple[Scenario, QemuBinary, QemuBinary]] = kw.pop("pairs", ())
        assert not kw, "the runner passes nothing else"
        named = [(s.id, str(a.version), str(b.version)) for s, a, b in pairs]
        self.calls.append(([s.id for s in scenarios], [str(b.version) for b in binaries], named))
        outs = [_outcome(s.id, b) for b in binaries for s in scenarios]
        return outs + [_outcome(s.id, a, b) for s, a, b in pairs]

    def host_facts(self) -> HostFacts:
        return HostFacts(kvm=False, vfio_dirty_report_works=False)


class _Backends:
    def __init__(self) -> None:
        self.executed: list[tuple[str, str | None, object]] = []
        self.predicted: list[tuple[str, str, str | None]] = []

    async def execute(self, s: Scenario, binary: QemuBinary, *, workdir: Path, allocator: object = None,
                      timeout: float = 60.0, destination_binary: QemuBinary | None = None) -> Outcome:  # fmt: skip
        self.executed.append((s.id, None if destination_binary is None else str(destination_binary.version), allocator))
        return _outcome(s.id, binary, destination_binary)

    def predict(self, s: Scenario, version: Version, host: HostFacts, *destination: Version) -> Outcome:
        self.predicted.append((s.id, str(version), str(destination[0]) if destination else None))
        return Outcome(s.id, "reference", version.short, "completed", source=VmState("completed", "postmigrate"),
                       destination=VmState("completed", "running"))  # fmt: skip


def _run(lab: _Lab, tmp_path: Path) -> tuple[_Backends, Any]:
    """A plain VFIO scenario on both binaries and a cross one pinned 10.0 -> 10.2, in one run."""
    backends = _Backends()
    targets = targets_for_binaries([BIN10, BIN102])
    plain = Scenario("plain", source=VFIO, destination=VFIO)
    cross = Scenario("cross", source=VmSpec(devices=VFIO.devices, qemu="10.0"),
                     destination=VmSpec(devices=VFIO.devices, qemu="10.2"))  # fmt: skip
    items = plan_items([plain, cross], PairPlan([(t, t) for t in targets], pool=targets, more=lambda: []))
    options = RunOptions(jobs=1, logs_dir=tmp_path, provider=lab, execute=backends.execute, predict=backends.predict)
    return backends, run_sync([plain, cross], targets, options, items)


def test_a_cross_vfio_item_goes_to_the_lab_as_a_pair_in_the_same_batch(tmp_path: Path) -> None:
    lab = _Lab(runs_pairs=True)
    backends, res = _run(lab, tmp_path)
    assert lab.calls == [(["plain"], ["10.0.2", "10.2.2"], [("cross", "10.0.2", "10.2.2")])]
    assert backends.executed == []  # nothing ran on the host
    assert ("cross", "10.0.2", "10.2.2") in backends.predicted
    assert res.counts()["agree"] == 3
    (outcome,) = [o for o in res.outcomes if o.scenario == "cross" and o.backend == "qemu"]
    assert (outcome.qemu_version, outcome.destination_qemu_version) == ("10.0.2", "10.2.2")
    assert outcome.extra["column"] == "10.0.2->10.2.2"


def test_a_provider_without_pairs_leaves_cross_items_to_the_host(tmp_path: Path) -> None:
    """Real host devices (no runs_pairs): the cross item runs on the host, with the destination's binary and
    no allocator (the executor's named skip)."""
    lab = _Lab(runs_pairs=False)
    backends, _ = _run(lab, tmp_path)
    assert lab.calls == [(["plain"], ["10.0.2", "10.2.2"], [])]
    assert backends.executed == [("cross", "10.2.2", None)]


def test_the_labs_runner_starts_each_side_on_its_own_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, str | None]] = []

    async def execute(s: Scenario, binary: QemuBinary, *, destination_binary: QemuBinary | None = None,
                      **kw: object) -> Outcome:  # fmt: skip
        calls.append(
            (s.id, str(binary.version), None if destination_binary is None else str(destination_binary.version))
        )
        if s.id == "broken":
            raise KeyError("x")
        return _outcome(s.id, binary, destination_binary)

    class _Allocator:
        def __init__(self, *args: object) -> None:
            pass

        def release_all(self) -> None:
            pass

    monkeypatch.setattr("harness.executor.execute", execute)
    monkeypatch.setattr(inside, "MdevAllocator", _Allocator)
    pairs = [(Scenario("cross"), BIN10, BIN102), (Scenario("broken"), BIN102, BIN10)]
    request = inside.Request(scenarios=[Scenario("plain")], binaries=[BIN10], variant="stock", pairs=pairs)
    assert asyncio.run(inside.run_request(request, tmp_path)) == 1
    assert calls == [("plain", "10.0.2", None), ("cross", "10.0.2", "10.2.2"), ("broken", "10.2.2", "10.0.2")]
    lines = [json.loads(line) for line in (tmp_path / inside.OUTCOMES).read_text().splitlines()]
    assert lines[1]["destination_qemu_version"] == "10.2.2" and lines[1]["extra"]["destination_binary"] == BIN102.path
    # The host keys a pair's error by both binaries (harness.vfio_batch): never the plain item's key.
    assert (lines[2]["scenario"], lines[2]["binary"]) == ("broken", "/fake/qemu-102->/fake/qemu-10")


def test_a_request_pickled_before_pairs_existed_has_none() -> None:
    request = inside.Request(scenarios=[], binaries=[], variant="stock")
    del request.__dict__["pairs"]
    assert asyncio.run(inside.run_request(request, Path("/nonexistent"))) == 0
