"""Every exception class the harness defines hangs under harness.errors.MigconformError, so one ``except`` can
catch "migconform could not do it" and no caller has to catch RuntimeError (which a bug raises too)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import harness
from harness.errors import (
    JobTimeout,
    MigconformError,
    MigrationTimeout,
    QmpEventTimeout,
    QmpTimeout,
    RunstateTimeout,
    WaitTimeout,
)

# Not errors (harness.errors says why): QEMU's refusal on its way to the verdict; the fuzzer's signal to end a
# hypothesis round (a BaseException, which hypothesis lets through).
NOT_ERRORS = {"harness.execution.verdict.Refused", "harness.fuzz.lockstep.StopFuzzing"}
# Runs the command line when imported.
SKIPPED_MODULES = ("harness.__main__",)


def _exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(harness.__path__, "harness."):
        if info.name in SKIPPED_MODULES:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found.append(cls)
    return found


def test_every_harness_exception_is_a_migconform_error() -> None:
    classes = _exception_classes()
    assert len(classes) > 20, "the walk found too few exception classes"
    outside = [
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if not issubclass(c, MigconformError) and f"{c.__module__}.{c.__qualname__}" not in NOT_ERRORS
    ]
    assert not outside, f"exception classes outside harness.errors.MigconformError: {outside}"
    assert not [c for c in classes if issubclass(c, MigconformError) and issubclass(c, RuntimeError)]


@pytest.mark.parametrize("cls", [MigrationTimeout, RunstateTimeout, QmpEventTimeout, JobTimeout])
def test_wait_timeouts_keep_their_message(cls: type[WaitTimeout]) -> None:
    error = cls("snapshot-save job j1", 60, "running")
    assert isinstance(error, WaitTimeout) and not isinstance(error, QmpTimeout)
    assert str(error) == "timed out after 60 s waiting for snapshot-save job j1 (last seen: running)"
    assert str(cls("an event on source", 0.5)) == "timed out after 0.5 s waiting for an event on source"
