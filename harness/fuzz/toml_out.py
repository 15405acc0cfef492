"""A found sequence as a ready scenario file: the loader's key names (docs/scenario-format.md), a header comment
with both outcomes, and a check that harness.loader reads it back to the same steps.

The standard library reads TOML but does not write it; the subset a scenario needs (strings, integers,
booleans, inline tables, arrays) is small enough to write here. Strings are written as JSON strings, whose
escapes (``\\"``, ``\\\\``, ``\\n``, ``\\uXXXX``) are all TOML basic-string escapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contract.outcome import Outcome
from contract.scenario import Step, VmSpec
from harness.errors import MigconformError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class FoundFileError(MigconformError):
    """A written scenario did not load back to the sequence it was written from (a bug of this module)."""


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """One TOML value (inline tables and arrays nest)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def step_table(step: Step) -> str:
    """One ``[[step]]``: only the keys the action takes, ``side`` only when it is not the default."""
    lines = ["[[step]]", f"action = {toml_value(step.action)}"]
    if step.side != "source":
        lines.append(f"side = {toml_value(step.side)}")
    if step.action == "set-capabilities":
        lines.append(f"capabilities = {toml_value(dict(step.capabilities))}")
    elif step.action == "set-parameters":
        lines.append(f"parameters = {toml_value(dict(step.parameters))}")
    elif step.action == "migrate" and step.transport is not None:
        lines.append(f"transport = {toml_value(step.transport)}")
    elif step.action == "qmp":
        lines.append(f"command = {toml_value(step.command or '')}")
        if step.arguments:
            lines.append(f"arguments = {toml_value(dict(step.arguments))}")
    elif step.action == "snapshot-save" and step.tag is not None:
        lines.append(f"tag = {toml_value(step.tag)}")
    return "\n".join(lines)


def outcome_line(outcome: Outcome) -> str:
    """An outcome in one line: verdict, stage, error, each side's status/runstate, events."""

    def side(state: Any) -> str:
        return "gone" if state is None else f"{state.status}/{state.runstate}"

    parts = [f"verdict={outcome.verdict}"]
    if outcome.stage is not None:
        parts.append(f"stage={outcome.stage}")
    parts.append(f"source={side(outcome.source)} destination={side(outcome.destination)}")
    if outcome.error:
        parts.append(f"error={outcome.error!r}")
    if outcome.events:
        parts.append(f"events={json.dumps(outcome.events, sort_keys=True)}")
    return " ".join(parts)


def scenario_text(
    scenario_id: str, description: str, vm: VmSpec, steps: Sequence[Step], header: Sequence[str] = ()
) -> str:
    """The scenario file: ``header`` lines as comments, then id, description, ``[vm]`` and the steps."""
    lines = [f"# {line}".rstrip() for text in header for line in text.splitlines()]
    lines += [f"id = {toml_value(scenario_id)}", f"description = {toml_value(description)}"]
    if not steps:
        lines.append("step = []")  # top-level, so before any table
    lines += ["", "[vm]", f"memory = {toml_value(vm.memory)}"]
    if vm.accel != "auto":
        lines.append(f"accel = {toml_value(vm.accel)}")
    if vm.args:
        lines.append(f"args = {toml_value(list(vm.args))}")
    for step in steps:
        lines += ["", step_table(step)]
    return "\n".join(lines) + "\n"


def write_found(path: Path, text: str, steps: Sequence[Step]) -> None:
    """Write the file and load it back with harness.loader: it must give the same steps, or the file is removed
    and :class:`FoundFileError` says why (a found file that does not replay is worse than none)."""
    from harness.loader import load_scenario
    from harness.results import write_atomic
    from harness.scenario_error import ScenarioError

    write_atomic(path, text)
    try:
        loaded = load_scenario(path)
    except ScenarioError as exc:
        path.unlink(missing_ok=True)
        raise FoundFileError(f"{path}: the written scenario does not load: {exc}") from exc
    if loaded.steps != tuple(steps):
        path.unlink(missing_ok=True)
        raise FoundFileError(f"{path}: loads to other steps than the sequence found: {loaded.steps} != {steps}")
