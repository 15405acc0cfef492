"""Scenario data: the parsed form of a scenario file (docs/scenario-format.md).

Plain frozen dataclasses shared by the loader (harness.loader, which validates TOML and names the file and
key of every error), the real-QEMU executor and the reference model. Both backends consume the same
expanded step list (:func:`expand_steps`), so they cannot disagree about what a scenario means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from contract.actions import STEP_ACTIONS
from contract.guest import GuestSpec

# The step actions (contract.actions holds each one's stage and handlers).
ACTIONS = tuple(action.name for action in STEP_ACTIONS)
SIDES = ("source", "destination", "both")
TRANSPORTS = ("tcp", "unix", "file", "exec")
MODES = ("precopy", "postcopy", "background-snapshot")
ACCELS = ("auto", "kvm", "tcg")
REQUIREMENTS = ("kvm", "uffd", "uffd-wp", "vfio", "guest", "kvm-invtsc", "kvm-no-hyperv")
PERSONALITIES = ("migratable", "no-p2p", "no-precopy", "no-dirty-logging", "no-migration")

# Capabilities the destination must share with the source (contract: "How a scenario is executed").
DESTINATION_CAPABILITIES = frozenset(
    {
        "postcopy-ram",
        "multifd",
        "x-ignore-shared",
        "return-path",
        "switchover-ack",
        "postcopy-preempt",
        "mapped-ram",
    }
)
DESTINATION_PARAMETERS = frozenset({"multifd-channels", "multifd-compression"})


@dataclass(frozen=True)
class DeviceSpec:
    """One ``[[vm.device]]``: ``-device DRIVER,id=ID,KEY=VALUE...``.

    ``personality`` is meaningful for vfio-pci only: what the VFIO provider must supply.
    """

    driver: str
    id: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    personality: str | None = None

    def device_arg(self, extra: Mapping[str, str] | None = None) -> str:
        """The ``-device`` value; ``extra`` (e.g. a provider's ``sysfsdev``) comes right after the driver.

        Every value is escaped with :func:`qemu_opt_value`, so scenario text can never add an option
        (``mac = "...,id=evil"`` stays one value, which QEMU then refuses).
        """
        # QEMU's get_opt_name_value: a first item holding '=' before any ',' is read as KEY=VALUE, not as
        # the implied driver; name the driver explicitly then.
        head = self.driver.replace(",", "")
        parts = [f"driver={qemu_opt_value(self.driver)}" if "=" in head else qemu_opt_value(self.driver)]
        for key, value in (extra or {}).items():
            parts.append(f"{qemu_opt_key(key)}={qemu_opt_value(value)}")
        if self.id is not None:
            parts.append(f"id={qemu_opt_value(self.id)}")
        for key, value in self.properties.items():
            parts.append(f"{qemu_opt_key(key)}={qemu_opt_value(value)}")
        return ",".join(parts)


def qemu_opt_value(value: str) -> str:
    """One value of a QEMU ``KEY=VALUE,...`` option: commas doubled, as QEMU's get_opt_value reads ``,,``
    as one literal comma (util/qemu-option.c), so the value cannot end early and add options."""
    return value.replace(",", ",,")


def qemu_opt_key(key: str) -> str:
    """A key of a QEMU option list. QEMU's get_opt_name has no escape: a key with ',' or '=' cannot be
    written, so it is refused rather than split into other options."""
    if not key or "," in key or "=" in key:
        raise ValueError(f"option name {key!r}: must be non-empty and contain neither ',' nor '='")
    return key


@dataclass(frozen=True)
class VmSpec:
    """One VM's configuration: ``[vm]`` merged with ``[source]`` or ``[destination]``."""

    machine: str = "q35"
    memory: str = "256M"
    accel: str = "auto"
    cpu: str | None = None
    only_migratable: bool = False
    args: tuple[str, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    # Extension: the QEMU this side runs (``[source] qemu`` / ``[destination] qemu``): a version prefix of a
    # found binary ("7.2") or a binary's path; None runs the side on the run's binary (or pair) like before.
    qemu: str | None = None

    @property
    def vfio_devices(self) -> tuple[DeviceSpec, ...]:
        return tuple(d for d in self.devices if d.driver == "vfio-pci")


@dataclass(frozen=True)
class MigrationSpec:
    """``[migration]``: the common case, expanded into steps by :func:`expand_steps`."""

    capabilities: Mapping[str, bool] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    transport: str = "tcp"
    mode: str = "precopy"


@dataclass(frozen=True)
class Step:
    """One ``[[step]]`` (or one step of the ``[migration]`` expansion).

    ``transport`` applies to ``migrate`` (default: the scenario's [migration] transport, else tcp).
    ``command``/``arguments`` apply to ``qmp``.
    """

    action: str
    side: str = "source"
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    transport: str | None = None
    command: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)
    # snapshot-save: the tag and job id (defaults are filled by the executor)
    tag: str | None = None


@dataclass(frozen=True)
class Scenario:
    id: str
    description: str = ""
    requires: tuple[str, ...] = ()
    source: VmSpec = field(default_factory=VmSpec)
    destination: VmSpec = field(default_factory=VmSpec)
    migration: MigrationSpec | None = None
    # None: the file has no ``step`` key ([migration], or its defaults, expands); () is ``step = []``.
    steps: tuple[Step, ...] | None = None
    # Extensions (compatible with the contract): where the scenario came from, and free-form tags.
    path: str | None = None
    tags: tuple[str, ...] = ()
    # Extension: a running guest whose memory is checked after the migration (``[guest]``, contract.guest).
    guest: GuestSpec | None = None

    @property
    def expanded_steps(self) -> tuple[Step, ...]:
        return expand_steps(self)

    def with_source(self, **changes: Any) -> Scenario:
        return replace(self, source=replace(self.source, **changes))


def expand_steps(scenario: Scenario) -> tuple[Step, ...]:
    """The step list both backends execute.

    Explicit ``[[step]]`` tables win, ``step = []`` included (a scenario that tests startup only says so);
    otherwise ``[migration]`` expands as the contract says: set-capabilities source, then destination
    (shared subset); set-parameters likewise; migrate; start-postcopy (mode postcopy); wait. A scenario
    with neither runs the default ``[migration]`` (every key is optional: precopy over tcp, then wait),
    so that it cannot agree having tested nothing. Mode background-snapshot adds the capability and
    writes to a file unless the scenario chose exec.
    """
    if scenario.steps is not None:
        return scenario.steps
    mig = scenario.migration if scenario.migration is not None else MigrationSpec()
    caps = dict(mig.capabilities)
    transport = mig.transport
    if mig.mode == "background-snapshot":
        caps.setdefault("background-snapshot", True)
        if transport not in ("file", "exec"):
            transport = "file"
    steps: list[Step] = []
    if caps:
        steps.append(Step("set-capabilities", "source", capabilities=caps))
        dest_caps = {k: v for k, v in caps.items() if k in DESTINATION_CAPABILITIES}
        if dest_caps:
            steps.append(Step("set-capabilities", "destination", capabilities=dest_caps))
    if mig.parameters:
        steps.append(Step("set-parameters", "source", parameters=dict(mig.parameters)))
        dest_params = {k: v for k, v in mig.parameters.items() if k in DESTINATION_PARAMETERS}
        if dest_params:
            steps.append(Step("set-parameters", "destination", parameters=dest_params))
    steps.append(Step("migrate", "source", transport=transport))
    if mig.mode == "postcopy":
        steps.append(Step("start-postcopy", "source"))
    steps.append(Step("wait", "source"))
    return tuple(steps)


def migrate_transport(scenario: Scenario, step: Step) -> str:
    """The transport a ``migrate`` step uses."""
    if step.transport is not None:
        return step.transport
    if scenario.migration is not None:
        if scenario.migration.mode == "background-snapshot" and scenario.migration.transport not in (
            "file",
            "exec",
        ):
            return "file"
        return scenario.migration.transport
    return "tcp"
