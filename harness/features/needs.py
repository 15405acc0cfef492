"""What a scenario needs of a QEMU build, read from the scenario itself.

A QEMU is configured before it is built: a build without spice has no ``spicevmc`` chardev, one without slirp
no ``user`` netdev, one without RDMA no ``rdma:`` migration URI. A scenario that uses such a feature cannot
test migration on that build: QEMU refuses the option before anything migrates, and the model, which knows
versions but not build configurations, would call that a divergence. So every optional feature is derived
here from what the scenario writes (its devices' drivers, ``args``, QMP steps' arguments, transports and
accelerators), never from a hand list per scenario, and harness.features.offered compares it with what the
binary's probe found.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from contract.scenario import Scenario, Step, VmSpec, migrate_transport

# Kinds of need and how a skip reason names them ("this QEMU has no <name> <noun>").
NOUNS: Mapping[str, str] = {
    "device": "device",
    "object": "object type",
    "chardev": "chardev",
    "netdev": "netdev backend",
    "block-driver": "block driver",
    "transport": "migration transport",
    "accel": "accelerator",
    "multifd-compression": "multifd compression method",
}

# chardev_alias_table (chardev/char.c): the old names a -chardev backend may still be given.
CHARDEV_ALIASES: Mapping[str, str] = {"parport": "parallel", "tty": "serial"}

# What a migration URI's scheme needs (migrate_uri_parse, migration/options.c and migration.c since 8.2: every
# socket kind is the "socket" MigrationAddressType; rdma and file have their own).
_SCHEME_TRANSPORT: Mapping[str, str] = {
    "tcp": "socket", "unix": "socket", "vsock": "socket", "fd": "socket", "exec": "exec", "rdma": "rdma",
    "file": "file",
}  # fmt: skip

# The options this module reads, and every QEMU option whose next argv item is its value (so that a value is
# never read as an option).
_READ = frozenset(
    {"-device", "-object", "-chardev", "-netdev", "-nic", "-blockdev", "-drive", "-accel", "-machine", "-M"}
)
_VALUE_OPTIONS = _READ | frozenset(
    {
        "-m", "-cpu", "-smp", "-global", "-incoming", "-name", "-uuid", "-bios", "-L", "-kernel", "-initrd",
        "-append", "-serial", "-monitor", "-qmp", "-display", "-vga", "-boot", "-rtc", "-numa", "-fsdev",
        "-virtfs", "-trace", "-d", "-D", "-icount", "-k", "-fw_cfg", "-plugin", "-msg", "-overcommit",
        "-mem-path", "-sandbox", "-run-with", "-action", "-tpmdev", "-spice", "-vnc", "-pidfile", "-parallel",
        "-debugcon", "-mon", "-chroot", "-runas", "-set", "-readconfig", "-option-rom", "-loadvm", "-hda", "-hdb",
        "-hdc", "-hdd", "-cdrom", "-fda", "-fdb", "-pflash", "-net", "-add-fd", "-smbios", "-acpitable",
        "-semihosting-config", "-compat", "-audio", "-audiodev",
    }
)  # fmt: skip


@dataclass(frozen=True, order=True)
class Need:
    """One optional feature the scenario uses: ``kind`` (a key of :data:`NOUNS`), the name QEMU knows it by,
    and where the scenario asks for it (for the skip reason)."""

    kind: str
    name: str
    where: str

    def missing_text(self) -> str:
        return f"this QEMU has no {self.name} {NOUNS[self.kind]} (needed by {self.where})"


def split_options(text: str) -> tuple[str, dict[str, str]]:
    """QemuOpts "first,key=value,..." (``,,`` is a comma inside a value) as (implied first value, options)."""
    parts: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    first = ""
    options: dict[str, str] = {}
    for index, part in enumerate(parts):
        key, sep, value = part.partition("=")
        if sep:
            options[key] = value
        elif index == 0:
            first = part
        else:
            options[key] = "on"
    return first, options


def _json_or_options(text: str, implied: str) -> dict[str, Any]:
    """A -blockdev/-object/-device value in either syntax QEMU takes: JSON (starts with ``{``) or QemuOpts
    whose implied first key is ``implied``."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    first, options = split_options(text)
    merged: dict[str, Any] = dict(options)
    if first:
        merged.setdefault(implied, first)
    return merged


def _block_drivers(tree: Mapping[str, Any], where: str) -> Iterator[Need]:
    """Every ``driver`` of a blockdev tree (nested nodes such as ``file`` name their own, flat ``file.driver``
    keys too)."""
    for key, value in tree.items():
        if (key == "driver" or key.endswith(".driver")) and isinstance(value, str) and value:
            yield Need("block-driver", value, where)
        elif isinstance(value, Mapping):
            yield from _block_drivers(value, where)


def _accel_need(name: str, where: str) -> Iterator[Need]:
    for accel in name.split(":"):  # -machine accel=kvm:tcg (a fallback list)
        if accel and accel != "auto":
            yield Need("accel", accel, where)


def _args_needs(args: tuple[str, ...], where: str) -> Iterator[Need]:
    i = 0
    while i < len(args):
        option = "-" + args[i].lstrip("-") if args[i].startswith("-") else args[i]
        value = args[i + 1] if option in _VALUE_OPTIONS and i + 1 < len(args) else None
        i += 2 if value is not None else 1
        if option == "-enable-kvm":
            yield Need("accel", "kvm", where)
        if value is None or option not in _READ:
            continue
        here = f"{where} {option}"
        if option == "-device":
            driver = _json_or_options(value, "driver").get("driver")
            if isinstance(driver, str) and driver and driver != "help":
                yield Need("device", driver, here)
        elif option == "-object":
            qom_type = _json_or_options(value, "qom-type").get("qom-type")
            if isinstance(qom_type, str) and qom_type and qom_type != "help":
                yield Need("object", qom_type, here)
        elif option == "-chardev":
            backend = split_options(value)[0] or split_options(value)[1].get("backend", "")
            if backend and backend != "help":
                yield Need("chardev", CHARDEV_ALIASES.get(backend, backend), here)
        elif option in ("-netdev", "-nic"):
            netdev = split_options(value)[0] or split_options(value)[1].get("type", "")
            if netdev and netdev not in ("help", "none"):
                yield Need("netdev", netdev, here)
        elif option == "-blockdev":
            yield from _block_drivers(_json_or_options(value, "driver"), here)
        elif option == "-drive":
            options = split_options("," + value)[1]
            if options.get("format"):
                yield Need("block-driver", options["format"], here)
            elif options.get("file", "").startswith("fat:"):
                yield Need("block-driver", "vvfat", here)
        elif option == "-accel":
            yield from _accel_need(split_options(value)[0] or split_options(value)[1].get("accel", ""), here)
        elif option in ("-machine", "-M"):
            yield from _accel_need(split_options(value)[1].get("accel", ""), here)


def _vm_needs(spec: VmSpec, side: str) -> Iterator[Need]:
    if spec.accel != "auto":
        yield Need("accel", spec.accel, f"[{side}] accel")
    for index, device in enumerate(spec.devices):
        yield Need("device", device.driver, f"[{side}] device[{index}]")
    yield from _args_needs(spec.args, f"[{side}] args")


def _uri_need(uri: object, where: str) -> Iterator[Need]:
    if isinstance(uri, str) and ":" in uri:
        scheme = uri.split(":", 1)[0]
        if scheme in _SCHEME_TRANSPORT:
            yield Need("transport", _SCHEME_TRANSPORT[scheme], where)


def _channel_needs(channels: object, where: str) -> Iterator[Need]:
    if not isinstance(channels, list):
        return
    for channel in channels:
        addr = channel.get("addr") if isinstance(channel, Mapping) else None
        transport = addr.get("transport") if isinstance(addr, Mapping) else None
        if isinstance(transport, str) and transport:
            yield Need("transport", transport, where)


def _qmp_needs(step: Step, where: str) -> Iterator[Need]:
    args = step.arguments
    command = step.command or ""
    if command == "device_add" and isinstance(args.get("driver"), str):
        yield Need("device", args["driver"], where)
    elif command == "object-add" and isinstance(args.get("qom-type"), str):
        yield Need("object", args["qom-type"], where)
    elif command in ("chardev-add", "chardev-change"):
        backend = args.get("backend")
        kind = backend.get("type") if isinstance(backend, Mapping) else None
        if isinstance(kind, str) and kind:
            yield Need("chardev", CHARDEV_ALIASES.get(kind, kind), where)
    elif command == "netdev_add" and isinstance(args.get("type"), str):
        yield Need("netdev", args["type"], where)
    elif command == "blockdev-add":
        yield from _block_drivers(args, where)
    elif command in ("migrate", "migrate-incoming"):
        yield from _uri_need(args.get("uri"), where)
        yield from _channel_needs(args.get("channels"), where)
    elif command == "migrate-set-parameters":
        yield from _compression_need(args, where)


def _compression_need(parameters: Mapping[str, Any], where: str) -> Iterator[Need]:
    """``multifd-compression``: MultiFDCompression's values other than none and zlib exist only where QEMU was
    configured with their library (zstd: CONFIG_ZSTD; qapi/migration.json)."""
    method = parameters.get("multifd-compression")
    if isinstance(method, str) and method not in ("", "none", "zlib"):
        yield Need("multifd-compression", method, where)


def scenario_needs(scenario: Scenario) -> tuple[Need, ...]:
    """Every optional feature ``scenario`` uses, once per (kind, name), first place first."""
    found: list[Need] = []
    found.extend(_vm_needs(scenario.source, "source"))
    found.extend(_vm_needs(scenario.destination, "destination"))
    for index, step in enumerate(scenario.expanded_steps):
        where = f"step[{index}] {step.action}"
        if step.action == "qmp":
            found.extend(_qmp_needs(step, f"step[{index}] {step.command}"))
        elif step.action == "migrate":
            found.extend(_uri_need(f"{migrate_transport(scenario, step)}:", where))
        elif step.action == "set-parameters":
            found.extend(_compression_need(step.parameters, where))
    seen: set[tuple[str, str]] = set()
    unique: list[Need] = []
    for need in found:
        if (need.kind, need.name) not in seen:
            seen.add((need.kind, need.name))
            unique.append(need)
    return tuple(unique)
