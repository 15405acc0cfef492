"""Machine types per QEMU version: which ``-machine`` names a binary has, and what an alias resolves to.

Why it matters for migration: ``q35``/``pc`` are aliases of the version's newest type, the configuration
section carries the resolved name (reference_impl.cross), and a type the version has removed or not yet added
refuses the start (select_machine, softmmu/vl.c 7.2 / system/vl.c 10.x). Measured with ``-machine help`` on
7.2.22, 10.0.2 and 10.2.2.
"""

from __future__ import annotations

import functools

from contract.scenario import DeviceSpec, VmSpec
from contract.versions import V7_2, V8_0, V8_1, V8_2, V9_0, V9_1, V9_2, V10_0, V10_2, Version
from reference_impl import catalog
from reference_impl.limits import NotModelled

# QEMU releases that added a versioned x86 machine type, oldest first; pc-q35-4.0.1 is q35 only.
_RELEASES = (
    "1.4", "1.5", "1.6", "1.7", "2.0", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9", "2.10",
    "2.11", "2.12", "3.0", "3.1", "4.0", "4.0.1", "4.1", "4.2", "5.0", "5.1", "5.2", "6.0", "6.1", "6.2", "7.0",
    "7.1", "7.2", "8.0", "8.1", "8.2", "9.0", "9.1", "9.2", "10.0", "10.1", "10.2",
)  # fmt: skip
# The oldest versioned type per family, measured (`-machine help`) on 7.2.22, 10.0.2 and 10.2.2, and read for
# 8.0-9.2 (DEFINE_I440FX_MACHINE / DEFINE_Q35_MACHINE in hw/i386/pc_piix.c and pc_q35.c of 8.0.0 ... 9.1.0 and
# 9.2's soft freeze): 8.2 removed pc-i440fx-1.4 ... 1.7, 9.1 pc-i440fx-2.0 ... 2.3, 10.2 everything before 5.0
# (deprecated machines "more than 6 years old").
_OLDEST: dict[Version, dict[str, tuple[int, ...]]] = {
    V7_2: {"pc-q35": (2, 4), "pc-i440fx": (1, 4)},
    V8_0: {"pc-q35": (2, 4), "pc-i440fx": (1, 4)},
    V8_1: {"pc-q35": (2, 4), "pc-i440fx": (1, 4)},
    V8_2: {"pc-q35": (2, 4), "pc-i440fx": (2, 0)},
    V9_0: {"pc-q35": (2, 4), "pc-i440fx": (2, 0)},
    V9_1: {"pc-q35": (2, 4), "pc-i440fx": (2, 4)},
    V9_2: {"pc-q35": (2, 4), "pc-i440fx": (2, 4)},
    V10_0: {"pc-q35": (2, 4), "pc-i440fx": (2, 4)},
    V10_2: {"pc-q35": (5, 0), "pc-i440fx": (5, 0)},
}
# Every profile from 7.2 to 10.2 has the types 5.0 and newer (7.2 and 10.2 have them; a type is never re-added).
_ALWAYS_FROM = (5, 0)
_UNVERSIONED = frozenset({"microvm", "isapc", "none", "x-remote"})
_ALIASES = {"q35": "pc-q35", "pc": "pc-i440fx"}
# send-configuration is off for pc-*-2.3 and older (hw_compat_2_3): no configuration section.
SENDS_CONFIGURATION_FROM = (2, 4)


def release_numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def machine_name(spec: VmSpec) -> str:
    """The machine type ``-machine`` asks for: its first item, or ``type=`` (QemuOpts with an implied key)."""
    name = spec.machine.split(",")[0]
    for item in spec.machine.split(","):
        if item.startswith("type="):
            name = item[len("type=") :]
    return name


@functools.lru_cache(maxsize=256)
def resolve_machine(name: str, version: Version) -> str | None:
    """The machine class name ``name`` selects on ``version`` (find_machine: an alias gives the newest type,
    ``MachineClass->name`` is what the configuration section carries), or None when the version has no such
    type. Raises NotModelled for an old type on a profile whose oldest types were not measured."""
    if name in _ALIASES:
        return f"{_ALIASES[name]}-{version.major}.{version.minor}"
    if name in _UNVERSIONED:
        return name
    family, sep, release = name.rpartition("-")
    if not sep or family not in ("pc-q35", "pc-i440fx") or release not in _RELEASES:
        return None
    if release == "4.0.1" and family != "pc-q35":
        return None
    number = release_numbers(release)
    if number > (version.major, version.minor):
        return None
    oldest = _OLDEST.get(version)
    if oldest is None:
        if number < _ALWAYS_FROM:
            raise NotModelled(f"machine type '{name}' on QEMU {version.short} (its oldest types were not measured)")
        return name
    if number < oldest[family]:
        return None
    if release == "4.0.1" and version >= V10_2:
        return None
    return name


def machine_error(spec: VmSpec, version: Version) -> str | None:
    """QEMU's startup refusal of ``-machine`` (select_machine), or None.

    7.2.22: "unsupported machine type" (softmmu/vl.c, then the hint line "Use -machine help ..."); 10.0.2 and
    10.2.2 name it: 'unsupported machine type: "pc-q35-10.0"' (system/vl.c). Measured on the three; read in
    8.0.0 ... 9.0.0 (7.2's text) and 9.1.0 / 9.2's soft freeze (10.0's).
    """
    if spec.machine == "q35":
        return None
    name = machine_name(spec)
    if resolve_machine(name, version) is not None:
        return None
    if version < V9_1:
        return "unsupported machine type"
    return f'unsupported machine type: "{name}"'


def machine_type(spec: VmSpec, version: Version, devices: tuple[DeviceSpec, ...]) -> str:
    """The resolved machine type of a VM that started (machine_error said None).

    The device model (reference_impl.machine) knows q35's pcie.0 and i440fx's pci.0 (its slots and qdev
    paths); a PCI device on another machine family is not modelled."""
    resolved = resolve_machine(machine_name(spec), version)
    assert resolved is not None
    pci_family = resolved.startswith(("pc-q35-", "pc-i440fx-"))
    if not pci_family and any(catalog.is_pci_driver(d.driver) for d in devices):
        raise NotModelled(f"PCI devices on machine type '{resolved}'")
    return resolved
