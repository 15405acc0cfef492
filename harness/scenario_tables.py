"""A parsed scenario document into :class:`reference_impl.scenario.Scenario`: the top-level keys and the
[vm]/[source]/[destination], [[device]], [migration] and [guest] tables (docs/scenario-format.md).

Strict on purpose: a typo in a scenario (``postcopy_ram`` for ``postcopy-ram``, ``sides`` for ``side``)
would otherwise silently test something else and report agreement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from contract.guest import GUEST_IMAGES, GUEST_KERNEL_MIB, GuestSpec
from contract.scenario import (
    ACCELS,
    MODES,
    PERSONALITIES,
    REQUIREMENTS,
    TRANSPORTS,
    DeviceSpec,
    MigrationSpec,
    Scenario,
    Step,
    VmSpec,
)
from contract.sizes import parse_mib, whole_mib
from harness.qemu_pin import qemu_pin
from harness.scenario_steps import parse_step
from harness.toml_reader import INT64_MAX, TomlReader, join_key, type_name

ID_PATTERN = re.compile(r"[a-z0-9._-]+")


TOP_KEYS = ("id", "description", "requires", "tags", "vm", "source", "destination", "migration", "step", "guest")
GUEST_KEYS = ("memory", "dirty-rate", "image")
VM_KEYS = ("machine", "memory", "accel", "cpu", "only-migratable", "args", "device")
# [source] and [destination] may also name the QEMU of their side (a cross-version scenario): [vm] is both
# sides, and one QEMU for both is what the run's binary already is.
SIDE_KEYS = (*VM_KEYS, "qemu")
DEVICE_KEYS = ("driver", "id", "properties", "personality")
MIGRATION_KEYS = ("capabilities", "parameters", "transport", "mode")


def _property_value(reader: TomlReader, value: Any, key: str) -> str:
    """QEMU -device properties are text; TOML booleans become on/off so ``enable-migration = true`` works."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float, str)):
        reader.number(value, key)
        return str(value)
    raise reader.error(key, f"expected a string, number or boolean, got {type_name(value)}")


def _device(reader: TomlReader, table: Mapping[str, Any], key: str) -> DeviceSpec:
    reader.check_keys(table, DEVICE_KEYS, key)
    if "driver" not in table:
        raise reader.error(join_key(key, "driver"), "missing required key")
    driver = reader.string(table["driver"], join_key(key, "driver"))
    if not driver:
        raise reader.error(join_key(key, "driver"), "must not be empty")
    dev_id = reader.string(table["id"], join_key(key, "id")) if "id" in table else None
    props: dict[str, str] = {}
    if "properties" in table:
        ptable = reader.table(table["properties"], join_key(key, "properties"))
        for name, value in ptable.items():
            if name == "id":
                raise reader.error(
                    join_key(key, "properties.id"), "set the device id with the 'id' key, not a property"
                )
            if not name or "," in name or "=" in name:
                # QEMU's option parser has no escape for names (get_opt_name): such a name would split.
                raise reader.error(join_key(key, f"properties.{name}"), "a property name cannot contain ',' or '='")
            props[name] = _property_value(reader, value, join_key(key, f"properties.{name}"))
    personality = None
    if "personality" in table:
        personality = reader.choice(table["personality"], join_key(key, "personality"), PERSONALITIES)
        if driver != "vfio-pci":
            raise reader.error(
                join_key(key, "personality"), f"only vfio-pci devices have a personality, not {driver!r}"
            )
    return DeviceSpec(driver=driver, id=dev_id, properties=props, personality=personality)


def _vm_overrides(reader: TomlReader, value: Any, key: str) -> dict[str, Any]:
    """One of [vm] / [source] / [destination] as VmSpec field overrides (only the keys present)."""
    table = reader.table(value, key)
    reader.check_keys(table, VM_KEYS if key == "vm" else SIDE_KEYS, key)
    out: dict[str, Any] = {}
    if "qemu" in table:
        out["qemu"] = qemu_pin(reader, table["qemu"], join_key(key, "qemu"))
    if "machine" in table:
        out["machine"] = reader.string(table["machine"], join_key(key, "machine"))
    if "memory" in table:
        out["memory"] = reader.memory(table["memory"], join_key(key, "memory"))
    if "accel" in table:
        out["accel"] = reader.choice(table["accel"], join_key(key, "accel"), ACCELS)
    if "cpu" in table:
        out["cpu"] = reader.string(table["cpu"], join_key(key, "cpu"))
    if "only-migratable" in table:
        out["only_migratable"] = reader.boolean(table["only-migratable"], join_key(key, "only-migratable"))
    if "args" in table:
        out["args"] = reader.string_list(table["args"], join_key(key, "args"))
    if "device" in table:
        devices = reader.table_list(table["device"], join_key(key, "device"))
        out["devices"] = tuple(_device(reader, d, f"{key}.device[{i}]") for i, d in enumerate(devices))
        ids = [d.id for d in out["devices"] if d.id is not None]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            raise reader.error(join_key(key, "device"), f"duplicate device id {dup!r}")
    return out


def _migration(reader: TomlReader, value: Any) -> MigrationSpec:
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


def _guest(reader: TomlReader, value: Any, vm_memory: Iterable[tuple[str, str]]) -> GuestSpec:
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


def parse_scenario(document: Mapping[str, Any], path: str | Path, default_id: str | None = None) -> Scenario:
    """Validate one parsed TOML document; ``path`` is only used to name the file in errors."""
    reader = TomlReader(path)
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
        steps = tuple(parse_step(reader, t, f"step[{i}]") for i, t in enumerate(tables))
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
