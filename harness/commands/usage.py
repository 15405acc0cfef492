"""The argument types that refuse bad usage before any command runs (harness.errors.UsageError: exit 2)."""

from __future__ import annotations

import argparse


def _whole_number(text: str, minimum: int, what: str = "a whole number") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError("must not be negative" if minimum == 0 else f"must be at least {minimum}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


AUTO = "auto"


def min_compared_type(text: str) -> int | str:
    return AUTO if text == AUTO else _whole_number(text, 0, "a whole number or auto")
