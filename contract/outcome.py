"""Outcome records and comparisons: the JSON of the contract (``--json FILE``).

Both backends (real QEMU and the model) produce :class:`Outcome`; :mod:`harness.compare` compares them.
Fields beyond the contract are optional extensions and are omitted from the JSON when unset, so that
consumers of the original contract see exactly the keys they expect plus, at most, new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("completed", "refused", "failed", "skipped")
# Optional fields beyond the contract, in the order the JSON lists them.
_EXTENSIONS = (
    "destination_qemu_version",
    "binary",
    "accel",
    "kernel",
    "vfio_provider",
    "vfio_states",
    "events",
    "guest",
    "duration_s",
    "logs",
    "not_modelled",
)
STAGES = ("startup", "set-capabilities", "set-parameters", "migrate", "start-postcopy", "migration")


@dataclass
class VmState:
    """``query-migrate`` status (``none`` when it has none) and ``query-status`` runstate at the end."""

    status: str
    runstate: str

    def to_json(self) -> dict[str, str]:
        return {"status": self.status, "runstate": self.runstate}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> VmState | None:
        if data is None:
            return None
        return cls(status=str(data["status"]), runstate=str(data["runstate"]))


@dataclass
class Outcome:
    scenario: str
    backend: str  # "qemu" | "reference"
    qemu_version: str
    verdict: str
    stage: str | None = None
    error: str | None = None
    source: VmState | None = None
    destination: VmState | None = None
    skip_reason: str | None = None
    # --- extensions (not in the original contract; omitted when None/empty) ---
    # A cross-version item: the destination's QEMU version (qemu_version stays the source's); None when both
    # sides run one version, so same-version results keep their old JSON byte for byte.
    destination_qemu_version: str | None = None
    binary: str | None = None  # path of the QEMU binary (qemu backend)
    accel: str | None = None  # accelerator the result came from: kvm | tcg
    kernel: str | None = None  # kernel the scenario ran on (host, or the VFIO lab's guest kernel)
    vfio_provider: str | None = None
    vfio_states: dict[str, list[str]] | None = None  # device id -> VFIO_MIGRATION device-state sequence
    events: dict[str, list[str]] | None = None  # side -> MIGRATION event statuses
    guest: dict[str, Any] | None = None  # {alive, pages_checked, bad_pages}
    duration_s: float | None = None
    logs: str | None = None  # the item's kept QEMU log folder (``--keep-logs``); never compared
    # reference backend: what the model does not model in this scenario (reference_impl.limits); such an
    # outcome is "skipped" with skip_reason "not modelled: <what>" and is never compared
    not_modelled: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "backend": self.backend,
            "qemu_version": self.qemu_version,
            "verdict": self.verdict,
            "stage": self.stage,
            "error": self.error,
            "source": self.source.to_json() if self.source else None,
            "destination": self.destination.to_json() if self.destination else None,
            "skip_reason": self.skip_reason,
        }
        for key in _EXTENSIONS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.extra:
            out["extra"] = self.extra
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            scenario=data["scenario"],
            backend=data["backend"],
            qemu_version=data["qemu_version"],
            verdict=data["verdict"],
            stage=data.get("stage"),
            error=data.get("error"),
            source=VmState.from_json(data.get("source")),
            destination=VmState.from_json(data.get("destination")),
            skip_reason=data.get("skip_reason"),
            destination_qemu_version=data.get("destination_qemu_version"),
            binary=data.get("binary"),
            accel=data.get("accel"),
            kernel=data.get("kernel"),
            vfio_provider=data.get("vfio_provider"),
            vfio_states=data.get("vfio_states"),
            events=data.get("events"),
            guest=data.get("guest"),
            duration_s=data.get("duration_s"),
            logs=data.get("logs"),
            not_modelled=data.get("not_modelled"),
            extra=dict(data.get("extra") or {}),
        )
