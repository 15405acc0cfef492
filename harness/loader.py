"""Scenario files (TOML) into :class:`reference_impl.scenario.Scenario`.

Strict on purpose: a typo in a scenario (``postcopy_ram`` for ``postcopy-ram``, ``sides`` for ``side``)
would otherwise silently test something else and report agreement. Every error names the file, the key
as a dotted path (``step[2].action``) and, where the set is closed, the allowed values, so the author can
fix it without reading this code.
"""

from __future__ import annotations

import functools
import importlib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reference_impl.guest import GUEST_IMAGES, GUEST_KERNEL_MIB, GuestSpec, parse_mib
from reference_impl.scenario import (
    ACCELS,
    ACTIONS,
    MODES,
    PERSONALITIES,
    REQUIREMENTS,
    SIDES,
    TRANSPORTS,
    DeviceSpec,
    MigrationSpec,
    Scenario,
    Step,
    VmSpec,
)

ID_PATTERN = re.compile(r"[a-z0-9._-]+")

# Fallback when the model's capability table is not importable: the union of every MigrationCapability
# of QEMU 7.2 ... 10.2 (fact sheet §1.1).
_FALLBACK_CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram", "x-colo",
    "release-ram", "block", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
    "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit", "mapped-ram",
)  # fmt: skip

TOP_KEYS = ("id", "description", "requires", "tags", "vm", "source", "destination", "migration", "step", "guest")
GUEST_KEYS = ("memory", "dirty-rate", "image")
VM_KEYS = ("machine", "memory", "accel", "cpu", "only-migratable", "args", "device")
DEVICE_KEYS = ("driver", "id", "properties", "personality")
MIGRATION_KEYS = ("capabilities", "parameters", "transport", "mode")
# Keys each action accepts besides "action" and "side": a key that the action would ignore is an error.
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "set-capabilities": ("capabilities",),
    "set-parameters": ("parameters",),
    "migrate": ("transport",),
    "start-postcopy": (),
    "cancel": (),
    "wait": (),
    "cont": (),
    "stop": (),
    "snapshot-save": ("tag",),
    "qmp": ("command", "arguments"),
    "migrate-continue": (),
}


class ScenarioError(Exception):
    """A scenario file that cannot be loaded; the message is meant for the scenario's author."""

    def __init__(self, path: str | Path, key: str | None, problem: str, allowed: Iterable[str] | None = None):
        self.path = str(path)
        self.key = key
        self.problem = problem
        self.allowed = tuple(allowed) if allowed is not None else None
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        hint = f" (allowed: {', '.join(self.allowed)})" if self.allowed is not None else ""
        super().__init__(f"{where}{problem}{hint}")


@functools.cache
def known_capabilities() -> tuple[str, ...]:
    """Every capability name of every modelled QEMU version (a name valid for any of them is accepted).

    A capability the chosen binary lacks is not a file error: QEMU refuses it, and that refusal is
    behaviour worth comparing. The model's per-version table is the source; the fact sheet's list is the
    fallback when the model is not installed.
    """
    names: set[str] = set(_FALLBACK_CAPABILITIES)
    try:
        caps_module = importlib.import_module("reference_impl.capabilities")
    except ImportError:
        return _FALLBACK_CAPABILITIES
    table = getattr(caps_module, "CAPABILITIES", None)
    if isinstance(table, Mapping):
        for per_version in table.values():
            names.update(str(n) for n in per_version)
    return tuple(sorted(names))


class _Reader:
    """Type-checked access to one file's TOML document, tracking the dotted key for error messages."""

    def __init__(self, path: str | Path):
        self.path = path

    def error(self, key: str | None, problem: str, allowed: Iterable[str] | None = None) -> ScenarioError:
        return ScenarioError(self.path, key, problem, allowed)

    def check_keys(self, table: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(_join(prefix, key), "unknown key", allowed)

    def table(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_type_name(value)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_type_name(value)}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_type_name(value)}")
        return value

    def choice(self, value: Any, key: str, allowed: Sequence[str]) -> str:
        text = self.string(value, key)
        if text not in allowed:
            raise self.error(key, f"unknown value {text!r}", allowed)
        return text

    def string_list(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of strings, got {_type_name(value)}")
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(value))

    def table_list(self, value: Any, key: str) -> list[Mapping[str, Any]]:
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {_type_name(value)}")
        return [self.table(item, f"{key}[{i}]") for i, item in enumerate(value)]

    def capabilities(self, value: Any, key: str) -> dict[str, bool]:
        table = self.table(value, key)
        allowed = known_capabilities()
        result: dict[str, bool] = {}
        for name, enabled in table.items():
            if name not in allowed:
                raise self.error(_join(key, name), "unknown migration capability", allowed)
            result[name] = self.boolean(enabled, _join(key, name))
        return result

    def parameters(self, value: Any, key: str) -> dict[str, Any]:
        """Parameter names are not checked here: an unknown one is QEMU's refusal to compare."""
        table = self.table(value, key)
        for name, item in table.items():
            if not isinstance(item, (str, int, float, bool)):
                raise self.error(_join(key, name), f"expected a string, number or boolean, got {_type_name(item)}")
        return dict(table)

    def qmp_arguments(self, value: Any, key: str) -> dict[str, Any]:
        table = self.table(value, key)
        return {str(k): _plain(v) for k, v in table.items()}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _plain(value: Any) -> Any:
    """TOML values as JSON-compatible plain data (dates become ISO strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _property_value(reader: _Reader, value: Any, key: str) -> str:
    """QEMU -device properties are text; TOML booleans become on/off so ``enable-migration = true`` works."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise reader.error(key, f"expected a string, number or boolean, got {_type_name(value)}")


def _device(reader: _Reader, table: Mapping[str, Any], key: str) -> DeviceSpec:
    reader.check_keys(table, DEVICE_KEYS, key)
    if "driver" not in table:
        raise reader.error(_join(key, "driver"), "missing required key")
    driver = reader.string(table["driver"], _join(key, "driver"))
    dev_id = reader.string(table["id"], _join(key, "id")) if "id" in table else None
    props: dict[str, str] = {}
    if "properties" in table:
        ptable = reader.table(table["properties"], _join(key, "properties"))
        for name, value in ptable.items():
            if name == "id":
                raise reader.error(_join(key, "properties.id"), "set the device id with the 'id' key, not a property")
            props[name] = _property_value(reader, value, _join(key, f"properties.{name}"))
    personality = None
    if "personality" in table:
        personality = reader.choice(table["personality"], _join(key, "personality"), PERSONALITIES)
        if driver != "vfio-pci":
            raise reader.error(_join(key, "personality"), f"only vfio-pci devices have a personality, not {driver!r}")
    return DeviceSpec(driver=driver, id=dev_id, properties=props, personality=personality)


def _vm_overrides(reader: _Reader, value: Any, key: str) -> dict[str, Any]:
    """One of [vm] / [source] / [destination] as VmSpec field overrides (only the keys present)."""
    table = reader.table(value, key)
    reader.check_keys(table, VM_KEYS, key)
    out: dict[str, Any] = {}
    if "machine" in table:
        out["machine"] = reader.string(table["machine"], _join(key, "machine"))
    if "memory" in table:
        out["memory"] = reader.string(table["memory"], _join(key, "memory"))
    if "accel" in table:
        out["accel"] = reader.choice(table["accel"], _join(key, "accel"), ACCELS)
    if "cpu" in table:
        out["cpu"] = reader.string(table["cpu"], _join(key, "cpu"))
    if "only-migratable" in table:
        out["only_migratable"] = reader.boolean(table["only-migratable"], _join(key, "only-migratable"))
    if "args" in table:
        out["args"] = reader.string_list(table["args"], _join(key, "args"))
    if "device" in table:
        devices = reader.table_list(table["device"], _join(key, "device"))
        out["devices"] = tuple(_device(reader, d, f"{key}.device[{i}]") for i, d in enumerate(devices))
        ids = [d.id for d in out["devices"] if d.id is not None]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            raise reader.error(_join(key, "device"), f"duplicate device id {dup!r}")
    return out


def _migration(reader: _Reader, value: Any) -> MigrationSpec:
    table = reader.table(value, "migration")
    reader.check_keys(table, MIGRATION_KEYS, "migration")
    spec = MigrationSpec()
    caps = reader.capabilities(table["capabilities"], "migration.capabilities") if "capabilities" in table else {}
    params = reader.parameters(table["parameters"], "migration.parameters") if "parameters" in table else {}
    transport = (
        reader.choice(table["transport"], "migration.transport", TRANSPORTS) if "transport" in table else spec.transport
    )
    mode = reader.choice(table["mode"], "migration.mode", MODES) if "mode" in table else spec.mode
    return MigrationSpec(capabilities=caps, parameters=params, transport=transport, mode=mode)


def _memory_key(document: Mapping[str, Any], side: str) -> str:
    """Where a side's memory size came from, to name it in an error."""
    for table in (side, "vm"):
        if isinstance(document.get(table), dict) and "memory" in document[table]:
            return f"{table}.memory"
    return f"{side} memory (default)"


def _guest(reader: _Reader, value: Any, vm_memory: Iterable[tuple[str, str]]) -> GuestSpec:
    """``[guest]``: the workload must fit in every VM's memory with room for the guest kernel."""
    table = reader.table(value, "guest")
    reader.check_keys(table, GUEST_KEYS, "guest")
    defaults = GuestSpec()
    memory = reader.string(table["memory"], "guest.memory") if "memory" in table else defaults.memory
    try:
        memory_mib = parse_mib(memory)
    except ValueError as exc:
        raise reader.error("guest.memory", str(exc)) from None
    if memory_mib < 1:
        raise reader.error("guest.memory", "must be at least 1M")
    for key, vm_size in vm_memory:
        try:
            vm_mib = parse_mib(vm_size)
        except ValueError:
            continue  # a VM size QEMU accepts but this parser does not: QEMU will say if it does not fit
        if memory_mib + GUEST_KERNEL_MIB > vm_mib:
            raise reader.error(
                "guest.memory",
                f"{memory} does not fit in {key} = {vm_size!r} with {GUEST_KERNEL_MIB} MiB for the guest kernel",
            )
    dirty_rate = defaults.dirty_rate
    if "dirty-rate" in table:
        rate = table["dirty-rate"]
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
            raise reader.error("guest.dirty-rate", f"expected pages per second, an integer >= 0, got {rate!r}")
        dirty_rate = rate
    image = reader.choice(table["image"], "guest.image", GUEST_IMAGES) if "image" in table else defaults.image
    return GuestSpec(memory=memory, dirty_rate=dirty_rate, image=image)


def _step(reader: _Reader, table: Mapping[str, Any], key: str) -> Step:
    if "action" not in table:
        raise reader.error(_join(key, "action"), "missing required key", ACTIONS)
    action = reader.choice(table["action"], _join(key, "action"), ACTIONS)
    allowed_keys = ("action", "side", *STEP_KEYS[action])
    for name in table:
        if name not in allowed_keys:
            raise reader.error(_join(key, name), f"not a key of action {action!r}", allowed_keys)
    side = reader.choice(table["side"], _join(key, "side"), SIDES) if "side" in table else "source"
    fields: dict[str, Any] = {}
    if "capabilities" in table:
        fields["capabilities"] = reader.capabilities(table["capabilities"], _join(key, "capabilities"))
    if "parameters" in table:
        fields["parameters"] = reader.parameters(table["parameters"], _join(key, "parameters"))
    if "transport" in table:
        fields["transport"] = reader.choice(table["transport"], _join(key, "transport"), TRANSPORTS)
    if "tag" in table:
        fields["tag"] = reader.string(table["tag"], _join(key, "tag"))
    if action == "qmp":
        if "command" not in table:
            raise reader.error(_join(key, "command"), "missing required key for action 'qmp'")
        fields["command"] = reader.string(table["command"], _join(key, "command"))
        if "arguments" in table:
            fields["arguments"] = reader.qmp_arguments(table["arguments"], _join(key, "arguments"))
    return Step(action=action, side=side, **fields)


def parse_scenario(document: Mapping[str, Any], path: str | Path, default_id: str | None = None) -> Scenario:
    """Validate one parsed TOML document; ``path`` is only used to name the file in errors."""
    reader = _Reader(path)
    reader.check_keys(document, TOP_KEYS, "")
    if "id" in document:
        scenario_id = reader.string(document["id"], "id")
    elif default_id is not None:
        scenario_id = default_id
    else:
        raise reader.error("id", "missing (and there is no file name to default to)")
    if not ID_PATTERN.fullmatch(scenario_id):
        where = "id" if "id" in document else "id (from the file name)"
        raise reader.error(where, f"{scenario_id!r} does not match [a-z0-9._-]+")
    description = reader.string(document["description"], "description") if "description" in document else ""
    requires: tuple[str, ...] = ()
    if "requires" in document:
        requires = reader.string_list(document["requires"], "requires")
        for i, item in enumerate(requires):
            if item not in REQUIREMENTS:
                raise reader.error(f"requires[{i}]", f"unknown requirement {item!r}", REQUIREMENTS)
    tags = reader.string_list(document["tags"], "tags") if "tags" in document else ()

    vm = _vm_overrides(reader, document["vm"], "vm") if "vm" in document else {}
    source = {**vm, **(_vm_overrides(reader, document["source"], "source") if "source" in document else {})}
    destination = {
        **vm,
        **(_vm_overrides(reader, document["destination"], "destination") if "destination" in document else {}),
    }
    migration = _migration(reader, document["migration"]) if "migration" in document else None
    steps: tuple[Step, ...] = ()
    if "step" in document:
        tables = reader.table_list(document["step"], "step")
        steps = tuple(_step(reader, t, f"step[{i}]") for i, t in enumerate(tables))
    guest = None
    if "guest" in document:
        vm_memory = [
            (_memory_key(document, side), str(spec.get("memory", VmSpec().memory)))
            for side, spec in (("source", source), ("destination", destination))
        ]
        guest = _guest(reader, document["guest"], vm_memory)
    return Scenario(
        id=scenario_id,
        description=description,
        requires=requires,
        source=VmSpec(**source),
        destination=VmSpec(**destination),
        migration=migration,
        steps=steps,
        path=str(path),
        tags=tags,
        guest=guest,
    )


def load_scenario(path: str | Path) -> Scenario:
    """One scenario file; its id defaults to the file name without ``.toml``."""
    p = Path(path)
    try:
        with p.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ScenarioError(p, None, "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(p, None, f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ScenarioError(p, None, f"cannot read: {exc.strerror or exc}") from None
    return parse_scenario(document, p, default_id=p.name.removesuffix(".toml"))


def scenario_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line, and every ``*.toml`` of each folder named, sorted per folder."""
    files: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(p.glob("*.toml")))
        elif p.exists():
            files.append(p)
        else:
            raise ScenarioError(p, None, "no such file or folder")
    return files


def load_scenarios(paths: Iterable[str | Path]) -> list[Scenario]:
    """Every scenario under ``paths``, in order; an id used twice is an error naming both files."""
    scenarios: list[Scenario] = []
    seen: dict[str, str] = {}
    for file in scenario_files(paths):
        scenario = load_scenario(file)
        if scenario.id in seen:
            if seen[scenario.id] == str(file):
                continue  # the same file named twice (a folder and one of its files)
            raise ScenarioError(file, "id", f"duplicate scenario id {scenario.id!r}, also used by {seen[scenario.id]}")
        seen[scenario.id] = str(file)
        scenarios.append(scenario)
    return scenarios
