"""migrate-set-parameters in the model (reference_impl.parameters).

Expected texts: real QEMU runs in docs/real-qemu-facts.md#params ("real 10.0.2" / "real 7.2.22"), or QEMU's
migrate_params_check where a rule was not run here.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.versions import V7_2, V9_0, V10_0, Version
from reference_impl.parameters import apply_parameter_request


def answer(version: Version, request: dict[str, Any], caps: frozenset[str] = frozenset(),
           current: dict[str, Any] | None = None) -> str | None:
    return apply_parameter_request(version, dict(current or {}), request, caps)[1]


@pytest.mark.parametrize(
    ("version", "request_", "expected"),
    [
        (V10_0, {"multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
        (V7_2, {"multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
        (V10_0, {"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
        (V10_0, {"multifd-channels": 255}, None),
        (V10_0, {"cpu-throttle-initial": 0},
         "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
        (V10_0, {"cpu-throttle-increment": 100},
         "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
        (V10_0, {"throttle-trigger-threshold": 0},
         "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
        (V10_0, {"max-cpu-throttle": 100},
         "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
        (V10_0, {"max-cpu-throttle": 10, "cpu-throttle-initial": 20},
         "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
        (V10_0, {"downtime-limit": 2000001},
         "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
        (V10_0, {"xbzrle-cache-size": 1000},
         "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"),
        (V10_0, {"max-bandwidth": 0}, None),
        (V10_0, {"max-bandwidth": "x"}, "Parameter 'max-bandwidth' expects uint64"),
        (V10_0, {"foo": 1}, "Parameter 'foo' is unexpected"),
        (V10_0, {"multifd-compression": "zstd"}, None),
        (V10_0, {"multifd-compression": "bogus"}, "Parameter 'multifd-compression' does not accept value 'bogus'"),
        (V10_0, {"multifd-zlib-level": 10}, "Parameter 'multifd_zlib_level' expects a value between 0 and 9"),
        (V7_2, {"multifd-zlib-level": 10}, None),  # real 7.2.22 accepts it
        (V10_0, {"multifd-zstd-level": 21}, "Parameter 'multifd_zstd_level' expects a value between 0 and 20"),
        (V7_2, {"multifd-zstd-level": 21}, None),  # real 7.2.22 accepts it
        (V10_0, {"x-vcpu-dirty-limit-period": 0},
         "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000"),
        (V7_2, {"x-vcpu-dirty-limit-period": 0}, "Parameter 'x-vcpu-dirty-limit-period' is unexpected"),
        (V10_0, {"vcpu-dirty-limit": 0}, "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"),
        (V10_0, {"announce-initial": 100001}, "Parameter 'announce_initial' expects a value between 0 and 100000"),
        (V10_0, {"compress-level": 10}, "Parameter 'compress-level' is unexpected"),
        (V7_2, {"compress-level": 10}, "Parameter 'compress_level' expects a value between 0 and 9"),
        (V10_0, {"multifd-qatzip-level": 10}, "Parameter 'multifd_qatzip_level' expects a value between 1 and 9"),
        (V7_2, {"multifd-qatzip-level": 10}, "Parameter 'multifd-qatzip-level' is unexpected"),
        (V10_0, {"cpu-throttle-initial": 0, "multifd-channels": 0},
         "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
    ],
)
def test_parameter_checks(version: Version, request_: dict[str, Any], expected: str | None) -> None:
    assert answer(version, request_) == expected


def test_refused_request_keeps_old_values() -> None:
    # migrate_params_check runs on a copy; nothing is applied when it fails.
    params, error = apply_parameter_request(V10_0, {"max-bandwidth": 5}, {"max-bandwidth": 7, "multifd-channels": 0},
                                            frozenset())
    assert error is not None
    assert params == {"max-bandwidth": 5}


def test_zero_copy_refuses_compression() -> None:
    # migrate_params_check: with zero-copy-send on, multifd-compression other than none gives the rule-i message.
    assert answer(V10_0, {"multifd-compression": "zlib"}, frozenset({"zero-copy-send", "multifd"})) == (
        "Zero copy only available for non-compressed non-TLS multifd migration"
    )


def test_mapped_ram_reads_the_current_compression() -> None:
    # real 10.0.2: with mapped-ram on, setting multifd-compression zlib is accepted (the check reads the
    # parameters before the request); a later request then trips it (read from migrate_params_check).
    caps = frozenset({"mapped-ram"})
    assert answer(V10_0, {"multifd-compression": "zlib"}, caps) is None
    assert answer(V10_0, {"max-bandwidth": 1}, caps, {"multifd-compression": "zlib"}) == (
        "Mapped-ram only available for non-compressed non-TLS multifd migration"
    )
    assert answer(V9_0, {"max-bandwidth": 1}, frozenset(), {"multifd-compression": "zlib"}) is None
