"""Memory sizes as scenarios write them (``[vm] memory``, ``[guest] memory``), in MiB.

One parser for every reader: the loader (does the guest workload fit in the VM?), the guest spec and the
model (does the destination's RAM block have the source's length? ram_load_precopy compares them). The
grammar follows QEMU's ``-m`` (qemu_strtosz_MiB: a bare number means MiB, an optional decimal fraction, a
K, M, G or T suffix) and also takes the "MiB"/"MB" spellings people write.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$", re.IGNORECASE)
_SCALE = {"K": 1 / 1024, "": 1.0, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}


def parse_mib(size: str) -> float:
    """``"64M"``, ``"1G"``, ``"1.5G"``, ``"512MiB"``, ``"2048K"`` -> MiB; ValueError when it is no size."""
    m = _SIZE.match(size.strip())
    if not m:
        raise ValueError(f'size {size!r}: expected a number with an optional K, M or G suffix, e.g. "64M"')
    return float(m.group(1)) * _SCALE[m.group(2).upper()]


def whole_mib(size: str) -> int:
    """:func:`parse_mib` for what is sized in whole MiB (the guest workload fills MiB-sized chunks)."""
    mib = parse_mib(size)
    if not mib.is_integer():
        raise ValueError(f"size {size!r} is not a whole number of MiB")
    return int(mib)
