"""The files a command writes: checked writable before anything runs (exit 2, not a traceback an hour
later), and written at the end, where a host that cannot take them (a full disk) is an environment error."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from harness import results as results_io
from harness.errors import HostEnvironmentError, UsageError
from harness.item_logs import missing_folders, remove_empty
from harness.report import html, junit
from harness.results import Results


def load_results(path: Path) -> Results:
    """A results file, or a usage error (exit 2) saying why it cannot be read."""
    try:
        return results_io.load(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def write_reports(res: Results, json_path: Path | None, junit_path: Path | None, html_path: Path | None) -> None:
    """Every report asked for; a host that cannot take one (full disk) is an environment error."""
    for path, kind in ((json_path, "json"), (junit_path, "junit"), (html_path, "html")):
        if path is None:
            continue
        try:
            if kind == "json":
                results_io.save(res, path)
            elif kind == "junit":
                results_io.write_atomic(path, junit.render(res))
            else:
                results_io.write_atomic(path, html.render(res, base=path.parent))
        except OSError as exc:
            raise HostEnvironmentError(f"cannot write {path}", exc.strerror or str(exc)) from exc


def check_writable(path: Path, what: str) -> None:
    """Before anything runs: ``path``'s folder exists (created) and takes a file, and ``path`` is not a
    folder; else a usage error (exit 2), so that an hour-long run does not end in a traceback."""
    if path.is_dir():
        raise UsageError(f"{what} {path}: is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        try:
            os.write(fd, b"{}\n")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there: {exc.strerror or exc}") from None


def check_writable_dir(path: Path, what: str) -> None:
    """Like :func:`check_writable`, for a folder migconform writes into (the logs root); a folder this check
    created is removed again (the run creates it when an item needs it)."""
    created = missing_folders(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".probe-", dir=path)
        os.rmdir(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there: {exc.strerror or exc}") from None
    finally:
        remove_empty(created)
