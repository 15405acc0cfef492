"""``migrate-set-parameters`` (``qmp_migrate_set_parameters`` / ``migrate_params_check``, migration/options.c).

Only the checks a scenario can reach are modelled: the QAPI visitor's name/type/enum errors, the range checks
in QEMU's order (first failure wins, all-or-nothing), and the checks that read capabilities (zero-copy-send,
mapped-ram). Messages were measured on 10.0.2 and 7.2.22 (docs/real-qemu-facts.md#params).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract.versions import PROFILES, V8_1, V8_2, V9_0, V9_1, V9_2, V10_0, V10_2, Version
from reference_impl.capabilities import N8_1, N9_0, N9_1, N9_2, vnum
from reference_impl.limits import NotModelled
from reference_impl.parameters_bitmaps import alias_map_error, well_typed_mapping

# Parameter name -> (QAPI kind, first version, first version without it). Kinds: "int" (uint32:
# x-checkpoint-delay), "uint8", "size" (uint64), "bool", "str", "enum", "list" (block-bitmap-mapping).
_PARAMETERS: dict[str, tuple[str, Version | None, Version | None]] = {
    "announce-initial": ("size", None, None),
    "announce-max": ("size", None, None),
    "announce-rounds": ("size", None, None),
    "announce-step": ("size", None, None),
    "compress-level": ("uint8", None, V9_1),
    "compress-threads": ("uint8", None, V9_1),
    "compress-wait-thread": ("bool", None, V9_1),
    "decompress-threads": ("uint8", None, V9_1),
    "throttle-trigger-threshold": ("uint8", None, None),
    "cpu-throttle-initial": ("uint8", None, None),
    "cpu-throttle-increment": ("uint8", None, None),
    "cpu-throttle-tailslow": ("bool", None, None),
    "tls-creds": ("str", None, None),
    "tls-hostname": ("str", None, None),
    "tls-authz": ("str", None, None),
    "max-bandwidth": ("size", None, None),
    "avail-switchover-bandwidth": ("size", V8_2, None),
    "downtime-limit": ("size", None, None),
    "x-checkpoint-delay": ("int", None, None),
    "block-incremental": ("bool", None, V9_1),
    "multifd-channels": ("uint8", None, None),
    "xbzrle-cache-size": ("size", None, None),
    "max-postcopy-bandwidth": ("size", None, None),
    "max-cpu-throttle": ("uint8", None, None),
    "multifd-compression": ("enum", None, None),
    "multifd-zlib-level": ("uint8", None, None),
    "multifd-qatzip-level": ("uint8", V9_2, None),
    "multifd-zstd-level": ("uint8", None, None),
    "x-vcpu-dirty-limit-period": ("size", V8_1, None),
    "vcpu-dirty-limit": ("size", V8_1, None),
    "mode": ("enum", V8_2, None),
    "zero-page-detection": ("enum", V9_0, None),
    "direct-io": ("bool", V9_1, None),
    "block-bitmap-mapping": ("list", None, None),
}

# Enum values in Debian's builds (qpl/uadk/qatzip need build options Debian does not enable; zstd is on).
_ENUMS: dict[str, tuple[str, ...]] = {
    "multifd-compression": ("none", "zlib", "zstd"),
    "mode": ("normal", "cpr-reboot"),
    "zero-page-detection": ("none", "legacy", "multifd"),
}
# Enum values added after the parameter (MigMode in qapi/migration.json: cpr-transfer in 10.0.2's, cpr-exec in
# 10.2.2's; measured: 10.0.2 refuses cpr-exec, 10.2.2 accepts it).
_ENUM_SINCE: dict[tuple[str, str], Version] = {
    ("mode", "cpr-transfer"): V10_0,
    ("mode", "cpr-exec"): V10_2,
}


def compression_methods() -> tuple[str, ...]:
    """The multifd-compression values the model expects of a QEMU (Debian's builds): any other is refused."""
    return _ENUMS["multifd-compression"]


DEFAULTS: dict[str, Any] = {
    "cpu-throttle-initial": 20,
    "max-cpu-throttle": 99,
    "multifd-compression": "none",
    "tls-creds": "",
}

_KNOWN: dict[Version, frozenset[str]] = {
    v: frozenset(
        name
        for name, (_, since, until) in _PARAMETERS.items()
        if (since is None or v >= since) and (until is None or v < until)
    )
    for v in PROFILES
}

ZERO_COPY_ERROR = "Zero copy only available for non-compressed non-TLS multifd migration"


def _range(field: str, text: str) -> str:
    # QERR_INVALID_PARAMETER_VALUE with the C field name (underscores), as measured.
    return f"Parameter '{field}' expects {text}"


def _visit(version: Version, request: Mapping[str, Any]) -> str | None:
    """The QAPI input visitor (MigrateSetParameters): unknown names, wrong types, enum values."""
    known = _KNOWN[version]
    for name, value in request.items():
        if name not in known:
            return f"Parameter '{name}' is unexpected"
        kind = _PARAMETERS[name][0]
        if kind in ("int", "uint8", "size"):
            # visit_type_uintN reads every unsigned width through qobject_input_type_uint64 first: anything but
            # a JSON integer is "expects uint64"; then the width's range (a negative is its two's complement).
            if isinstance(value, bool) or not isinstance(value, int):
                return f"Parameter '{name}' expects uint64"
            width = {"uint8": 8, "int": 32}.get(kind)
            if width is not None and not 0 <= value % (1 << 64) < (1 << width):
                return f"Parameter '{name}' expects uint{width}_t"
        elif kind == "bool":
            if not isinstance(value, bool):
                return f"Invalid parameter type for '{name}', expected: boolean"
        elif kind == "str":
            # tls-creds, tls-hostname, tls-authz are the alternate StrOrNull in MigrateSetParameters (measured:
            # an integer gives this text on 7.2.22, 10.0.2 and 10.2.2).
            if not isinstance(value, str):
                return f"Invalid parameter type for '{name}', expected: StrOrNull"
        elif kind == "enum" and not isinstance(value, str):
            return f"Invalid parameter type for '{name}', expected: string"  # qobject_input_type_str
        elif kind == "enum" and value not in _ENUMS[name]:
            since = _ENUM_SINCE.get((name, str(value)))
            if since is None or version < since:
                return f"Parameter '{name}' does not accept value '{value}'"
        elif kind == "list" and not well_typed_mapping(value):
            raise NotModelled(f"{name} that is not a list of node aliases with string members")
    return None


def _wrapped(version: Version, request: Mapping[str, Any]) -> dict[str, Any]:
    """The values the handler sees: qobject_input_type_uint64 takes a negative JSON integer for a uint64 or size
    parameter as its two's complement (measured: downtime-limit -1 reaches the range check as 2^64-1 and is
    refused; max-bandwidth -1 is accepted as SIZE_MAX), on 7.2.22, 10.0.2 and 10.2.2."""
    return {
        name: value + (1 << 64)
        if _PARAMETERS[name][0] == "size" and isinstance(value, int) and not isinstance(value, bool) and value < 0
        else value
        for name, value in request.items()
    }


def migrate_params_check(
    version: Version,
    merged: Mapping[str, Any],
    request: Mapping[str, Any],
    caps: frozenset[str],
    current: Mapping[str, Any],
) -> str | None:
    """``migrate_params_check`` on the merged parameters (``migrate_params_test_apply``), QEMU's order.

    ``current`` holds the parameters before the request: the mapped-ram rule reads them (migrate_tls /
    migrate_multifd_compression), not the new values.
    """
    n = vnum(version)

    def has(name: str) -> bool:
        return name in request

    def get(name: str) -> int:
        return int(merged.get(name, DEFAULTS.get(name, 0)))

    if has("compress-level") and get("compress-level") > 9:
        return _range("compress_level", "a value between 0 and 9")
    if has("compress-threads") and get("compress-threads") < 1:
        return _range("compress_threads", "a value between 1 and 255")
    if has("decompress-threads") and get("decompress-threads") < 1:
        return _range("decompress_threads", "a value between 1 and 255")
    if has("throttle-trigger-threshold") and not 1 <= get("throttle-trigger-threshold") <= 100:
        return _range("throttle_trigger_threshold", "an integer in the range of 1 to 100")
    if has("cpu-throttle-initial") and not 1 <= get("cpu-throttle-initial") <= 99:
        return _range("cpu_throttle_initial", "an integer in the range of 1 to 99")
    if has("cpu-throttle-increment") and not 1 <= get("cpu-throttle-increment") <= 99:
        return _range("cpu_throttle_increment", "an integer in the range of 1 to 99")
    if has("downtime-limit") and get("downtime-limit") > 2000 * 1000:
        return _range("downtime_limit", "an integer in the range of 0 to (2000 * 1000) ms")
    if has("multifd-channels") and get("multifd-channels") < 1:
        return _range("multifd_channels", "a value between 1 and 255")
    # 7.2.22 accepts multifd-zlib-level 10 and multifd-zstd-level 21 (migrate_params_test_apply does not copy
    # them, so the check reads the current value); 10.0.2 refuses them (measured). The copy came with commit
    # b4014a2bf5 "migration: Properly apply migration compression level parameters" (March 2024): 9.0.0 has
    # it, 8.1.0 and 8.2.0 do not (migration/options.c of each release, read).
    if n >= N9_0 and has("multifd-zlib-level") and get("multifd-zlib-level") > 9:
        return _range("multifd_zlib_level", "a value between 0 and 9")
    if n >= N9_2 and has("multifd-qatzip-level") and not 1 <= get("multifd-qatzip-level") <= 9:
        return _range("multifd_qatzip_level", "a value between 1 and 9")
    if n >= N9_0 and has("multifd-zstd-level") and get("multifd-zstd-level") > 20:
        return _range("multifd_zstd_level", "a value between 0 and 20")
    if has("xbzrle-cache-size"):
        size = get("xbzrle-cache-size")
        if size < 4096 or size & (size - 1):
            return _range("xbzrle_cache_size", "a power of two no less than the target page size")
    # The merged copy has every field set, so raising cpu-throttle-initial above the current
    # max-cpu-throttle is refused with this message too.
    if (has("max-cpu-throttle") or has("cpu-throttle-initial")) and not (
        get("cpu-throttle-initial") <= get("max-cpu-throttle") <= 99
    ):
        return _range("max_cpu_throttle", "an integer in the range of cpu_throttle_initial to 99")
    if has("announce-initial") and get("announce-initial") > 100000:
        return _range("announce_initial", "a value between 0 and 100000")
    if has("announce-max") and get("announce-max") > 100000:
        return _range("announce_max", "a value between 0 and 100000")
    if has("announce-rounds") and get("announce-rounds") > 1000:
        return _range("announce_rounds", "a value between 0 and 1000")
    if has("announce-step") and not 1 <= get("announce-step") <= 10000:
        return _range("announce_step", "a value between 0 and 10000")
    if has("block-bitmap-mapping"):
        error = alias_map_error(merged["block-bitmap-mapping"])
        if error is not None:
            return f"Invalid mapping given for block-bitmap-mapping: {error}"
    if "zero-copy-send" in caps and (
        merged.get("multifd-compression", "none") != "none" or merged.get("tls-creds", "")
    ):
        return ZERO_COPY_ERROR
    if (
        n >= N9_0
        and "mapped-ram" in caps
        and (current.get("multifd-compression", "none") != "none" or current.get("tls-creds", ""))
    ):
        return "Mapped-ram only available for non-compressed non-TLS multifd migration"
    if n >= N8_1:
        if has("x-vcpu-dirty-limit-period") and not 1 <= get("x-vcpu-dirty-limit-period") <= 1000:
            return _range("x-vcpu-dirty-limit-period", "a value between 1 and 1000")
        if has("vcpu-dirty-limit") and get("vcpu-dirty-limit") < 1:
            if n < N9_1:  # QERR_INVALID_PARAMETER_VALUE until commit 45d19d9306 (April 2024, 9.1)
                return _range("vcpu_dirty_limit", "is invalid, it must greater then 1 MB/s")
            return "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"
    return None


def apply_parameter_request(
    version: Version, current: dict[str, Any], request: Mapping[str, Any], caps: frozenset[str]
) -> tuple[dict[str, Any], str | None]:
    """``qmp_migrate_set_parameters``: (parameters afterwards, error or None). Allowed during a migration
    (measured: max-bandwidth while active -> {})."""
    error = _visit(version, request)
    if error is not None:
        return current, error
    request = _wrapped(version, request)
    merged = {**current, **request}
    error = migrate_params_check(version, merged, request, caps, current)
    if error is not None:
        return current, error
    return merged, None
