"""QEMU's own error message from what it wrote on stderr, as the outcome contract wants it: the line that
says why, without the program-name and option prefixes QEMU puts in front (error_report's location)."""

from __future__ import annotations

import os
from collections.abc import Sequence


def _option_prefixes(argv: Sequence[str]) -> list[str]:
    """The location prefixes QEMU may put before a message: "-opt value: " or "-opt: ", longest first."""
    prefixes: set[str] = set()
    for i, item in enumerate(argv):
        if not item.startswith("-"):
            continue
        prefixes.add(f"{item}: ")
        if i + 1 < len(argv):
            prefixes.add(f"{item} {argv[i + 1]}: ")
    return sorted(prefixes, key=len, reverse=True)


def strip_qemu_prefixes(line: str, argv: Sequence[str]) -> str:
    """QEMU's message without "qemu-system-x86_64: " and without the "-device ...: " location.

    The program name QEMU prints is the basename of argv[0].
    """
    text = line.rstrip("\n")
    program = os.path.basename(argv[0]) + ": " if argv else ""
    if program and text.startswith(program):
        text = text[len(program) :]
        for prefix in _option_prefixes(argv):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
    return text


def qemu_error_message(stderr: str, argv: Sequence[str]) -> str:
    """The message of the error that ended a QEMU launch.

    QEMU may print warnings first (mdpy's "Could not enable error recovery", vfio's dirty-tracking
    warning) and hints after (lines with no prefix), so take the last line that carries the program
    prefix and is not a warning; else the last non-empty line.
    """
    program = os.path.basename(argv[0]) + ": " if argv else ""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if program and line.startswith(program):
            message = strip_qemu_prefixes(line, argv)
            if not message.startswith("warning: "):
                return message
    return strip_qemu_prefixes(lines[-1], argv) if lines else ""
