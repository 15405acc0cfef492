"""Scenario files (TOML) into :class:`contract.scenario.Scenario`.

Strict on purpose: a typo in a scenario (``postcopy_ram`` for ``postcopy-ram``, ``sides`` for ``side``)
would otherwise silently test something else and report agreement. Every error names the file, the key
as a dotted path (``step[2].action``) and, where the set is closed, the allowed values, so the author can
fix it without reading this code. This module reads the files (hostile bytes included) and folders;
harness.scenario_tables validates the document, harness.host_commands is --no-exec.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from contract.scenario import Scenario
from harness.host_commands import refuse_host_commands
from harness.scenario_error import ScenarioError
from harness.scenario_tables import parse_scenario
from harness.toml_reader import join_key

# Hostile input: bounds checked before and right after parsing, so that no file reaches a traceback.
MAX_FILE_BYTES = 1024 * 1024
MAX_NESTING = 32


def load_scenario(path: str | Path, *, no_exec: bool = False) -> Scenario:
    """One scenario file; its id defaults to the file name without ``.toml``.

    Whatever the bytes, the result is a scenario or a :class:`ScenarioError` naming the file: a file too
    large, not UTF-8, not TOML or nested beyond reason is refused before any of it is used. ``no_exec``
    refuses a scenario that would run a host command (:func:`harness.host_commands.host_commands`).
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
            stack.extend((v, join_key(key, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


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
