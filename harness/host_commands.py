"""Scenarios that run host commands, for ``--no-exec`` (docs/scenario-format.md#security).

A scenario file is code: QEMU runs what its ``exec:`` URIs, tap scripts and plugins name. This finds those
places in a loaded scenario so that --no-exec can refuse it before any QEMU starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from contract.scenario import Scenario, Step, migrate_transport
from harness.scenario_error import ScenarioError
from harness.toml_reader import join_key

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
                found.append((join_key(where, "transport"), "a migration channel with transport exec runs its args"))
            if "cpr-exec-command" in item:
                found.append((join_key(where, "cpr-exec-command"), "cpr-exec-command is run by QEMU"))
            stack.extend((v, join_key(where, str(k))) for k, v in item.items())
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
