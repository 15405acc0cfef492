"""``[source] qemu`` / ``[destination] qemu``: which QEMU a side of a cross-version scenario runs.

The value is checked when the file loads, so that a typo ("10,0", "v7.2") is an error naming the file and
key rather than a scenario that silently runs on the wrong binary; whether that version is installed here
is the run's question (a pinned version that is not found skips the item, naming what is missing).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.scenario_error import ScenarioError
from harness.toml_reader import TomlReader

# The forms ``--qemu`` accepts as a version (harness.binaries.is_version_request): MAJOR.MINOR[.MICRO].
VERSION_PIN = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")
PIN_FORM = 'a version prefix such as "7.2" or "10.0.2", or the path of a QEMU binary'


def is_path_pin(text: str) -> bool:
    """A pin naming a file, not a version: anything with a slash (a bare version never has one)."""
    return "/" in text


def qemu_pin(reader: TomlReader, value: Any, key: str) -> str:
    """The pin as the run will resolve it: a version text as written, a path made absolute (relative to the
    scenario file's folder, so a scenario means the same whatever the working directory)."""
    text = reader.string(value, key)
    if VERSION_PIN.fullmatch(text):
        return text
    if is_path_pin(text):
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = Path(reader.path).resolve().parent / path
        if path.is_file():
            return str(path)
        raise _bad_pin(reader, key, f"no such file {str(path)!r}")
    raise _bad_pin(reader, key, f"{text!r} is not {PIN_FORM}")


def _bad_pin(reader: TomlReader, key: str, problem: str) -> ScenarioError:
    """The error, with the versions this host has, so the author can pick one."""
    return reader.error(key, f"{problem} (QEMU versions found here: {found_versions()})")


def found_versions() -> str:
    """The versions discovery finds, as text; "none" when it finds none or cannot run."""
    from harness.binaries import discover_binaries
    from harness.errors import MigconformError

    try:
        found = discover_binaries()
    except (MigconformError, OSError):
        return "none"
    return ", ".join(str(b.version) for b in found) or "none"
