"""Type-checked access to a scenario's TOML values, each error naming its dotted key.

Separate from the table parsers because the value rules (QMP's integer ranges, QAPI parameter types, QEMU's
-m sizes, the capability names of every modelled version) are QEMU's, whichever table a value sits in.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.scenario_error import ScenarioError

# Fallback when the model's capability table is not importable: the union of every MigrationCapability
# of QEMU 7.2 ... 10.2 (qapi/migration.json MigrationCapability).
_FALLBACK_CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram", "x-colo",
    "release-ram", "block", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
    "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit", "mapped-ram",
)  # fmt: skip


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


class TomlReader:
    """Type-checked access to one file's TOML document, tracking the dotted key for error messages."""

    def __init__(self, path: str | Path):
        self.path = path

    def error(self, key: str | None, problem: str, allowed: Iterable[str] | None = None) -> ScenarioError:
        return ScenarioError(self.path, key, problem, allowed)

    def check_keys(self, table: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(join_key(prefix, key), "unknown key", allowed)

    def table(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {type_name(value)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type_name(value)}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {type_name(value)}")
        return value

    def choice(self, value: Any, key: str, allowed: Sequence[str]) -> str:
        text = self.string(value, key)
        if text not in allowed:
            raise self.error(key, f"unknown value {text!r}", allowed)
        return text

    def string_list(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of strings, got {type_name(value)}")
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(value))

    def table_list(self, value: Any, key: str) -> list[Mapping[str, Any]]:
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {type_name(value)}")
        return [self.table(item, f"{key}[{i}]") for i, item in enumerate(value)]

    def capabilities(self, value: Any, key: str) -> dict[str, bool]:
        table = self.table(value, key)
        allowed = known_capabilities()
        result: dict[str, bool] = {}
        for name, enabled in table.items():
            if name not in allowed:
                raise self.error(join_key(key, name), "unknown migration capability", allowed)
            result[name] = self.boolean(enabled, join_key(key, name))
        return result

    def parameters(self, value: Any, key: str) -> dict[str, Any]:
        """Parameter names are not checked here: an unknown one is QEMU's refusal to compare. Numbers are:
        one QMP cannot carry, or one outside its QAPI type's range, tests QEMU's JSON layer, not migration."""
        table = self.table(value, key)
        for name, item in table.items():
            if not isinstance(item, (str, int, float, bool)):
                raise self.error(join_key(key, name), f"expected a string, number or boolean, got {type_name(item)}")
            self.number(item, join_key(key, name), PARAMETER_TYPES.get(name))
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
                self.numbers_within(item, join_key(key, str(name)))
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


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def type_name(value: Any) -> str:
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
