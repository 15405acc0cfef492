"""Scenario files (TOML) into :class:`contract.scenario.Scenario`.

Strict on purpose: a typo in a scenario (``postcopy_ram`` for ``postcopy-ram``, ``sides`` for ``side``)
would otherwise silently test something else and report agreement. Every error names the file, the key
as a dotted path (``step[2].action``) and, where the set is closed, the allowed values, so the author can
fix it without reading this code.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from contract.guest import GUEST_IMAGES, GUEST_KERNEL_MIB, GuestSpec
from contract.scenario import (
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
    migrate_transport,
)
from contract.sizes import parse_mib, whole_mib
from harness.errors import MigconformError

ID_PATTERN = re.compile(r"[a-z0-9._-]+")

# Fallback when the model's capability table is not importable: the union of every MigrationCapability
# of QEMU 7.2 ... 10.2 (qapi/migration.json MigrationCapability).
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
# The sides each action can act on, as harness/executor.py runs them: start-postcopy, cancel,
# migrate-continue and wait always act on the migration of the source (MigrationPair), so another side
# would be ignored by the executor and honoured by the model (a false divergence); migrate from both
# sides at once is not a migration.
SOURCE_ONLY = ("source",)
ACTION_SIDES: dict[str, tuple[str, ...]] = {
    "migrate": ("source", "destination"),
    "start-postcopy": SOURCE_ONLY,
    "cancel": SOURCE_ONLY,
    "wait": SOURCE_ONLY,
    "migrate-continue": SOURCE_ONLY,
}

# Hostile input: bounds checked before and right after parsing, so that no file reaches a traceback.
MAX_FILE_BYTES = 1024 * 1024
MAX_NESTING = 32

# QMP integers: QEMU's JSON parser keeps a number as int64, else as uint64 (parse_literal), else turns it into
# a double, which no integer parameter accepts; a TOML integer outside both ranges cannot reach QEMU as one.
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
# QAPI types of MigrateSetParameters' integer members (qapi/migration.json) and the range QEMU's
# qobject input visitor accepts for each: uint64 and size take negatives "for backward compatibility"
# (qobject_input_type_uint64; measured on 7.2.22 and 10.0.2: max-bandwidth = -1 is accepted, 2**64 is
# "Parameter 'max-bandwidth' expects uint64"); uintN refuses what exceeds N bits after that conversion
# (visit_type_uintN: multifd-channels = -1 is "Parameter 'multifd-channels' expects uint8_t").
_QAPI_RANGES: dict[str, tuple[int, int]] = {
    "size": (INT64_MIN, UINT64_MAX),
    "uint64": (INT64_MIN, UINT64_MAX),
    "uint32": (0, 2**32 - 1),
    "uint8": (0, 255),
}
PARAMETER_TYPES: dict[str, str] = {
    "announce-initial": "size",
    "announce-max": "size",
    "announce-rounds": "size",
    "announce-step": "size",
    "compress-level": "uint8",
    "compress-threads": "uint8",
    "decompress-threads": "uint8",
    "throttle-trigger-threshold": "uint8",
    "cpu-throttle-initial": "uint8",
    "cpu-throttle-increment": "uint8",
    "max-bandwidth": "size",
    "avail-switchover-bandwidth": "size",
    "downtime-limit": "uint64",
    "x-checkpoint-delay": "uint32",
    "multifd-channels": "uint8",
    "xbzrle-cache-size": "size",
    "max-postcopy-bandwidth": "size",
    "max-cpu-throttle": "uint8",
    "multifd-zlib-level": "uint8",
    "multifd-qatzip-level": "uint8",
    "multifd-zstd-level": "uint8",
    "x-vcpu-dirty-limit-period": "uint64",
    "vcpu-dirty-limit": "uint64",
}

# A VM's memory as QEMU's -m reads it (qemu_strtosz after set_memory_options' legacy fix-up, which makes a
# bare number MiB): a decimal number, an optional fraction, an optional suffix of B K M G T P E (any case).
SIZE_PATTERN = re.compile(r"([0-9]+)(\.[0-9]+)?([BKMGTPE]?)", re.IGNORECASE)
SIZE_FORM = 'a number with an optional B, K, M, G, T, P or E suffix, e.g. "256M" (a bare number is MiB)'


class ScenarioError(MigconformError):
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
    behaviour worth comparing. The model's per-version table is the source; the list above (from qapi/migration.json) is
    the fallback when the model is not installed.
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
        """Parameter names are not checked here: an unknown one is QEMU's refusal to compare. Numbers are:
        one QMP cannot carry, or one outside its QAPI type's range, tests QEMU's JSON layer, not migration."""
        table = self.table(value, key)
        for name, item in table.items():
            if not isinstance(item, (str, int, float, bool)):
                raise self.error(_join(key, name), f"expected a string, number or boolean, got {_type_name(item)}")
            self.number(item, _join(key, name), PARAMETER_TYPES.get(name))
        return dict(table)

    def number(self, value: Any, key: str, qapi_type: str | None = None) -> None:
        """A float must be finite (QEMU's JSON parser has no NaN or Infinity); an integer must fit QMP."""
        if isinstance(value, bool):
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"{value!r} is not a number QMP accepts (JSON has no NaN or Infinity)")
        if isinstance(value, int):
            low, high = _QAPI_RANGES[qapi_type] if qapi_type is not None else (INT64_MIN, UINT64_MAX)
            if not low <= value <= high:
                kind = f"QAPI type {qapi_type}" if qapi_type is not None else "a QMP integer (int64 or uint64)"
                raise self.error(key, f"{value} is out of range for {kind}: allowed {low} .. {high}")

    def qmp_arguments(self, value: Any, key: str) -> dict[str, Any]:
        table = self.table(value, key)
        self.numbers_within(table, key)
        return {str(k): _plain(v) for k, v in table.items()}

    def numbers_within(self, value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                self.numbers_within(item, _join(key, str(name)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.numbers_within(item, f"{key}[{i}]")
        else:
            self.number(value, key)

    def memory(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        m = SIZE_PATTERN.fullmatch(text)
        if m is None or (m.group(2) and m.group(3).upper() == "B"):
            raise self.error(key, f"{text!r} is not a size QEMU's -m accepts: expected {SIZE_FORM}")
        return text


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
        reader.number(value, key)
        return str(value)
    raise reader.error(key, f"expected a string, number or boolean, got {_type_name(value)}")


def _device(reader: _Reader, table: Mapping[str, Any], key: str) -> DeviceSpec:
    reader.check_keys(table, DEVICE_KEYS, key)
    if "driver" not in table:
        raise reader.error(_join(key, "driver"), "missing required key")
    driver = reader.string(table["driver"], _join(key, "driver"))
    if not driver:
        raise reader.error(_join(key, "driver"), "must not be empty")
    dev_id = reader.string(table["id"], _join(key, "id")) if "id" in table else None
    props: dict[str, str] = {}
    if "properties" in table:
        ptable = reader.table(table["properties"], _join(key, "properties"))
        for name, value in ptable.items():
            if name == "id":
                raise reader.error(_join(key, "properties.id"), "set the device id with the 'id' key, not a property")
            if not name or "," in name or "=" in name:
                # QEMU's option parser has no escape for names (get_opt_name): such a name would split.
                raise reader.error(_join(key, f"properties.{name}"), "a property name cannot contain ',' or '='")
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
        out["memory"] = reader.memory(table["memory"], _join(key, "memory"))
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
        memory_mib = whole_mib(memory)
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
        if isinstance(rate, bool) or not isinstance(rate, int) or not 0 <= rate <= INT64_MAX:
            raise reader.error(
                "guest.dirty-rate", f"expected pages per second, an integer 0 .. {INT64_MAX}, got {rate!r}"
            )
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
    action_sides = ACTION_SIDES.get(action, SIDES)
    if side not in action_sides:
        raise reader.error(_join(key, "side"), f"action {action!r} does not act on side {side!r}", action_sides)
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
    steps: tuple[Step, ...] | None = None  # absent: [migration] (or its defaults) expands
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


def load_scenario(path: str | Path, *, no_exec: bool = False) -> Scenario:
    """One scenario file; its id defaults to the file name without ``.toml``.

    Whatever the bytes, the result is a scenario or a :class:`ScenarioError` naming the file: a file too
    large, not UTF-8, not TOML or nested beyond reason is refused before any of it is used. ``no_exec``
    refuses a scenario that would run a host command (:func:`host_commands`).
    """
    p = Path(path)
    try:
        with p.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ScenarioError(p, None, "no such file") from None
    except OSError as exc:
        raise ScenarioError(p, None, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError(p, None, f"larger than {MAX_FILE_BYTES // 1024} KiB: not a scenario file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(p, None, f"not UTF-8 text (invalid byte at offset {exc.start}), so not TOML") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(p, None, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(p, None, f"nested more than {MAX_NESTING} arrays or tables deep") from None
    depth_key = _too_deep(document)
    if depth_key is not None:
        raise ScenarioError(p, depth_key, f"nested more than {MAX_NESTING} arrays or tables deep")
    scenario = parse_scenario(document, p, default_id=p.name.removesuffix(".toml"))
    if no_exec:
        refuse_host_commands(scenario)
    return scenario


def _too_deep(document: Mapping[str, Any]) -> str | None:
    """The first key nested deeper than MAX_NESTING (iteratively: the check itself must not recurse)."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_NESTING:
            return key or None
        if isinstance(value, dict):
            stack.extend((v, _join(key, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


# --- scenarios that run host commands (--no-exec) ---------------------------------------------------------

NO_EXEC_HINT = "refused by --no-exec (a scenario file is code: docs/scenario-format.md#security)"
# QEMU options in `args` that run a host program or load host code, refused by --no-exec.
_CODE_OPTIONS = {
    "plugin": "-plugin loads a shared library into QEMU",
    "readconfig": "-readconfig reads options this check cannot see",
}
_NETDEV_OPTIONS = ("netdev", "net", "nic")
# -netdev/-net/-nic: tap and bridge run scripts or qemu-bridge-helper (net_init_tap, net_init_bridge);
# user's smb= starts smbd and guestfwd=...-cmd: runs a command (slirp_smb, slirp_guestfwd).
_NETDEV_TYPES = ("tap", "bridge")
_NETDEV_MARKERS = ("script=", "helper=", "smb=", "cmd:", '"script"', '"helper"', '"smb"')
# QMP commands that run host programs whatever their arguments.
_QMP_COMMANDS = {
    "human-monitor-command": "HMP reaches every monitor command (migrate exec:, netdev_add tap, ...)",
}


def _netdev_runs_program(value: str) -> bool:
    text = value.strip()
    if text.startswith("{"):
        try:
            kind = json.loads(text).get("type")
        except (ValueError, AttributeError):
            return True  # not JSON QEMU would take either; refuse rather than guess
    else:
        first = text.split(",", 1)[0]
        kind = first.removeprefix("type=")
    return kind in _NETDEV_TYPES or any(marker in text for marker in _NETDEV_MARKERS)


def _arg_uses(args: Sequence[str], key: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for i, item in enumerate(args):
        here = f"{key}[{i}]"
        if "exec:" in item:
            found.append((here, f"{item!r} names an exec: URI, which QEMU runs through /bin/sh"))
            continue
        option = item.lstrip("-") if item.startswith("-") else None
        if option in _CODE_OPTIONS:
            found.append((here, _CODE_OPTIONS[option]))
        elif option in _NETDEV_OPTIONS and i + 1 < len(args) and _netdev_runs_program(args[i + 1]):
            found.append(
                (
                    f"{key}[{i + 1}]",
                    f"-{option} {args[i + 1]!r} runs a host program (tap/bridge scripts, smb=, guestfwd cmd:)",
                )
            )
    return found


def _exec_in(value: Any, key: str) -> list[tuple[str, str]]:
    """``exec:`` anywhere in a string (URIs, HMP command lines) and ``transport = "exec"`` (migrate channels)."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[Any, str]] = [(value, key)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str) and "exec:" in item:
            found.append((where, f"{item!r} names an exec: URI, which QEMU runs through /bin/sh"))
        elif isinstance(item, Mapping):
            if item.get("transport") == "exec":
                found.append((_join(where, "transport"), "a migration channel with transport exec runs its args"))
            if "cpr-exec-command" in item:
                found.append((_join(where, "cpr-exec-command"), "cpr-exec-command is run by QEMU"))
            stack.extend((v, _join(where, str(k))) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return sorted(found)


def host_commands(scenario: Scenario) -> list[tuple[str, str]]:
    """Where ``scenario`` would make QEMU (or the harness for it) run a host command: (key, why) pairs.

    Transport exec (the harness's ``exec:cat``), any ``exec:`` URI or exec channel in a ``qmp`` step's
    arguments, ``cpr-exec-command``, ``human-monitor-command``, and ``args`` that run host programs or
    load host code. Not a sandbox: a scenario still opens files and sockets through ``args``.
    """
    found: list[tuple[str, str]] = []
    for side, spec in (("source", scenario.source), ("destination", scenario.destination)):
        found += _arg_uses(spec.args, f"{side}.args")
    migration = scenario.migration
    if migration is not None:
        if migrate_transport(scenario, Step("migrate")) == "exec":
            found.append(("migration.transport", "transport exec runs 'cat' through /bin/sh (exec: URIs)"))
        found += _exec_in(dict(migration.parameters), "migration.parameters")
    for i, step in enumerate(scenario.steps or ()):
        here = f"step[{i}]"
        if step.action == "migrate" and step.transport == "exec":
            found.append((f"{here}.transport", "transport exec runs 'cat' through /bin/sh (exec: URIs)"))
        found += _exec_in(dict(step.parameters), f"{here}.parameters")
        if step.action == "qmp":
            if step.command in _QMP_COMMANDS:
                found.append((f"{here}.command", f"{step.command}: {_QMP_COMMANDS[step.command]}"))
            elif step.command == "netdev_add" and step.arguments.get("type") in _NETDEV_TYPES:
                found.append((f"{here}.arguments.type", "a tap or bridge netdev runs a host program"))
            found += _exec_in(dict(step.arguments), f"{here}.arguments")
    return found


def refuse_host_commands(scenario: Scenario) -> None:
    """--no-exec: the first place ``scenario`` would run a host command, as a load error."""
    found = host_commands(scenario)
    if found:
        key, why = found[0]
        raise ScenarioError(scenario.path or scenario.id, key, f"{why}; {NO_EXEC_HINT}")


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


def load_scenarios(paths: Iterable[str | Path], *, no_exec: bool = False) -> list[Scenario]:
    """Every scenario under ``paths``, in order; an id used twice is an error naming both files."""
    scenarios: list[Scenario] = []
    seen: dict[str, str] = {}
    for file in scenario_files(paths):
        scenario = load_scenario(file, no_exec=no_exec)
        if scenario.id in seen:
            if seen[scenario.id] == str(file):
                continue  # the same file named twice (a folder and one of its files)
            raise ScenarioError(file, "id", f"duplicate scenario id {scenario.id!r}, also used by {seen[scenario.id]}")
        seen[scenario.id] = str(file)
        scenarios.append(scenario)
    return scenarios
