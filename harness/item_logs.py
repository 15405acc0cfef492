"""Each item's QEMU log folder under the logs root (``--logs-dir``), kept or removed as ``--keep-logs`` says.

A folder per item, named after it, so that a path a QEMU error cites stays valid; after the item it is kept
(default: when the item diverged, erred, hit a known QEMU bug or an environment error) or removed, and the
kept folder's path goes into the outcome (``logs``) for the reports to link.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from contract.outcome import Outcome
from contract.scenario import Scenario
from harness.errors import HostEnvironmentError
from harness.results import item_log_name

if TYPE_CHECKING:
    from harness.targets import Target


class LogOptions(Protocol):
    """What the log folders depend on, of the run's options (harness.runner.RunOptions has them all)."""

    @property
    def logs_dir(self) -> Path | None: ...
    @property
    def keep_logs(self) -> str: ...
    @property
    def vfio_provider(self) -> str | None: ...


# Statuses (see harness.recorder.ItemRecorder.record) after which --keep-logs failed keeps an item's logs.
_FAILED_STATUSES = ("DIVERGE", "known QEMU bug", "error", "env error")


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first (what creating ``path`` creates)."""
    missing: list[Path] = []
    current = path.absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove each folder that is empty, deepest first; stop at the first that is not (it holds something)."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


class ItemLogs:
    """The log folders of one run's items and the folders the run created for them."""

    def __init__(self, options: LogOptions) -> None:
        self.options = options
        self._logs_created = missing_folders(options.logs_dir) if options.logs_dir is not None else []

    def keeps(self, status: str) -> bool:
        """Whether ``--keep-logs`` keeps the logs of an item that ended with ``status``."""
        return self.options.logs_dir is not None and (
            self.options.keep_logs == "all"
            or (self.options.keep_logs == "failed" and status.startswith(_FAILED_STATUSES))
        )

    def copy_provider_logs(
        self, source: Path | None, scenario: Scenario, target: Target, outcome: Outcome | None
    ) -> str | None:
        """Copy the logs a VFIO provider brought back (the mtty lab: through its writable 9p share) into the
        logs root; without any, say so in the outcome (``extra.logs_not_kept``) rather than link nothing."""
        assert self.options.logs_dir is not None
        if source is None or not source.is_dir():
            if outcome is not None and outcome.verdict != "skipped":
                outcome.extra["logs_not_kept"] = (
                    f"the VFIO provider {outcome.vfio_provider or self.options.vfio_provider!r} ran this item's "
                    "QEMUs itself and returned no logs"
                )
            return None
        destination = self.options.logs_dir / item_log_name(scenario.id, target.column)
        try:
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(source, destination)
        except OSError as exc:
            if outcome is not None:
                outcome.extra["logs_not_kept"] = f"copying {source} failed: {exc}"
            return None
        return str(destination.resolve())

    def settle_logs(self, workdir: Path, status: str) -> str | None:
        """Keep or remove an item's log folder (``--keep-logs``); the kept folder's absolute path, or None.

        A folder the executor never wrote into (a skip decided before any QEMU started) is not worth a link."""
        keep = self.keeps(status)
        if keep and workdir.is_dir() and any(workdir.iterdir()):
            return str(workdir.resolve())
        shutil.rmtree(workdir, ignore_errors=True)
        return None

    def item_workdir(self, scenario: Scenario, target: Target) -> Path:
        """A fresh folder for the item's QEMU logs: under the logs root (a previous run's folder of the same
        item is replaced, so its logs never mix with this run's), else a temporary one."""
        if self.options.logs_dir is None:
            return Path(tempfile.mkdtemp(prefix="mc-"))
        workdir = self.options.logs_dir / item_log_name(scenario.id, target.column)
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            workdir.mkdir(parents=True)
        except OSError as exc:  # a full or read-only disk: the host's failure, not this item's
            raise HostEnvironmentError("the item's log folder", f"{workdir}: {exc.strerror or exc}") from exc
        return workdir

    @staticmethod
    def round_workdir(workdir: Path, round_: int) -> Path:
        """``--repeat``: the log folder of run ``round_`` (from 0) inside the item's folder."""
        run_dir = workdir / f"run-{round_ + 1}"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostEnvironmentError("the item's log folder", f"{run_dir}: {exc.strerror or exc}") from exc
        return run_dir

    def remove_empty_logs_root(self) -> None:
        """A run that kept nothing leaves no empty logs folder behind (only folders this run created)."""
        remove_empty(self._logs_created)


def provider_log_folder(outcome: Outcome) -> Path | None:
    """Where the mtty lab left an item's QEMU logs: ``extra.lab_logs`` inside its run folder ``extra.lab_run``
    (harness.vfio_lab.inside writes them into the writable share). The keys are the lab's; they are
    removed from the outcome, whose ``logs`` names the kept copy instead."""
    run, logs = outcome.extra.get("lab_run"), outcome.extra.pop("lab_logs", None)
    return Path(str(run)) / str(logs) if run and logs else None
