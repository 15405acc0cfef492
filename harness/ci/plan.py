"""A CI plan: the cells of a matrix (QEMU x lab kernel x shard) and the exact command each job runs.

One plan is rendered three ways (harness.ci.render: GitLab, GitHub, JSON) and executed here by
``migconform ci run-local``; ``migconform merge --plan`` checks that the results it is given are exactly its
cells. A cell's QEMU is whatever ``migconform run --qemu`` takes (a version among those found, a path), or
``build:SPEC`` for a QEMU ``migconform qemu build SPEC`` makes first. The ``qemu`` field is the one place a
later axis of source:destination pairs would go (``7.2:10.0``), with its own run options; everything else
(ids, merge, columns) treats it as an opaque label.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.shards import COUNTS, load_durations, shard_loads

PLAN_VERSION = 1
BUILD_PREFIX = "build:"
RESULTS_ROOT = "ci-results"
LAB_PROVIDER = "mtty"


@dataclass(frozen=True)
class Cell:
    """One job of the matrix. ``kernel`` None: no VFIO lab (VFIO scenarios skip for want of a device)."""

    qemu: str
    kernel: str | None
    shard: int
    shards: int

    @property
    def id(self) -> str:
        kernel = self.kernel or "none"
        return _slug(f"q{self.qemu}-k{kernel}-s{self.shard}of{self.shards}")

    @property
    def shard_text(self) -> str:
        return f"{self.shard}/{self.shards}"

    @property
    def build(self) -> str | None:
        """The ``migconform qemu build`` SPEC of a built QEMU, None for one that is found as it is."""
        return self.qemu.removeprefix(BUILD_PREFIX) if self.qemu.startswith(BUILD_PREFIX) else None

    @property
    def qemu_arg(self) -> str:
        """What ``--qemu`` gets: a built QEMU is then found by its release, like an installed one."""
        return self.build or self.qemu

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "qemu": self.qemu, "kernel": self.kernel, "shard": self.shard_text}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def column_label(column: str, kernel: str | None) -> str:
    """A merged report's column: the run's own column (the QEMU version), with the lab kernel when there is one."""
    return f"{column} / kernel {kernel}" if kernel else column


@dataclass
class Plan:
    suite: str
    qemus: list[str]
    kernels: list[str | None]
    shards: int
    balance: str
    migconform: list[str]
    keep_logs: str = "failed"
    run_args: list[str] = field(default_factory=list)
    plan_args: list[str] = field(default_factory=list)
    shard_members: list[list[str]] = field(default_factory=list)
    shard_loads_ms: list[int] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return [
            Cell(qemu, kernel, k, self.shards)
            for qemu in self.qemus
            for kernel in self.kernels
            for k in range(1, self.shards + 1)
        ]

    def cell(self, cell_id: str) -> Cell | None:
        return next((c for c in self.cells if c.id == cell_id), None)

    def results_dir(self, cell: Cell) -> str:
        return f"{RESULTS_ROOT}/{cell.id}"

    def results_path(self, cell: Cell) -> str:
        return f"{self.results_dir(cell)}/results.json"

    def run_argv(self, cell: Cell) -> list[str]:
        """The exact command of the cell's job (relative paths: the job runs in the project's folder)."""
        kernel = f"series={cell.kernel}" if cell.kernel else None
        return self.run_words(cell.qemu_arg, kernel, cell.shard_text, cell.id)

    def run_words(self, qemu: str, kernel_option: str | None, shard: str, cell_id: str) -> list[str]:
        """:meth:`run_argv` from its variable parts, so a CI file can write it once with variables."""
        out = f"{RESULTS_ROOT}/{cell_id}"
        argv = [*self.migconform, "run", self.suite, "--qemu", qemu]
        if kernel_option is not None:
            argv += ["--vfio-provider", LAB_PROVIDER, "--vfio-option", kernel_option]
        argv += ["--shard", shard, "--balance", self.balance, "--cell", cell_id]
        argv += ["--json", f"{out}/results.json", "--junit", f"{out}/junit.xml", "--logs-dir", f"{out}/logs"]
        return [*argv, "--keep-logs", self.keep_logs, *self.run_args]

    def build_argv(self, cell: Cell) -> list[str] | None:
        return [*self.migconform, "qemu", "build", cell.build] if cell.build else None

    def plan_argv(self, output: str) -> list[str]:
        """The command that writes this plan as JSON: the merge job re-creates it rather than carrying a file."""
        return [*self.migconform, "ci", "plan", *self.plan_args, "--format", "json", "-o", output]

    def merge_argv(self, plan_path: str) -> list[str]:
        root = RESULTS_ROOT
        return [
            *self.migconform,
            "merge",
            "--plan",
            plan_path,
            "-o",
            f"{root}/merged.json",
            "--junit",
            f"{root}/merged.xml",
            "--html",
            f"{root}/report.html",
        ]

    def to_json(self) -> dict[str, Any]:
        jobs = []
        for cell in self.cells:
            job: dict[str, Any] = {"id": cell.id, "cell": cell.to_json(), "argv": self.run_argv(cell)}
            build = self.build_argv(cell)
            if build:
                job["build_argv"] = build
            job["results"] = self.results_path(cell)
            job["artifacts"] = [self.results_dir(cell) + "/"]
            jobs.append(job)
        plan_file = f"{RESULTS_ROOT}/plan.json"
        return {
            "migconform_ci_plan": PLAN_VERSION,
            "suite": self.suite,
            "axes": {"qemu": self.qemus, "kernel": self.kernels, "shards": self.shards},
            "balance": self.balance,
            "migconform": self.migconform,
            "keep_logs": self.keep_logs,
            "run_args": self.run_args,
            "plan_args": self.plan_args,
            "shards": [
                {"shard": f"{i + 1}/{self.shards}", "scenarios": members, "expected_ms": load}
                for i, (members, load) in enumerate(zip(self.shard_members, self.shard_loads_ms, strict=True))
            ],
            "jobs": jobs,
            "merge": {
                "id": "merge",
                "needs": [cell.id for cell in self.cells],
                "argv": self.merge_argv(plan_file),
                "plan_argv": self.plan_argv(plan_file),
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        if not isinstance(data, dict) or data.get("migconform_ci_plan") != PLAN_VERSION:
            raise ValueError("not a `migconform ci plan --format json` file")
        axes = data["axes"]
        shards = data.get("shards") or []
        return cls(
            suite=str(data["suite"]),
            qemus=[str(q) for q in axes["qemu"]],
            kernels=[None if k is None else str(k) for k in axes["kernel"]],
            shards=int(axes["shards"]),
            balance=str(data["balance"]),
            migconform=[str(a) for a in data["migconform"]],
            keep_logs=str(data.get("keep_logs") or "failed"),
            run_args=[str(a) for a in data.get("run_args") or []],
            plan_args=[str(a) for a in data.get("plan_args") or []],
            shard_members=[[str(s) for s in entry["scenarios"]] for entry in shards],
            shard_loads_ms=[int(entry["expected_ms"]) for entry in shards],
        )


def _split_list(values: Sequence[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def make_plan(
    *,
    suite: str,
    qemus: Sequence[str],
    kernels: Sequence[str],
    shards: int,
    durations: str | None,
    migconform: str,
    keep_logs: str,
    run_args: str,
    plan_args: Sequence[str],
) -> Plan:
    """The plan for these axes; the shards are computed here exactly as each job's run computes its own."""
    from harness.loader import load_scenarios

    qemu_list = _split_list(qemus)
    if not qemu_list:
        raise UsageError("ci plan: name the QEMUs of the matrix (--qemu 7.2.22,10.0.2 or build:10.2)")
    if len(set(qemu_list)) != len(qemu_list):
        raise UsageError(f"ci plan: a QEMU is named twice in {', '.join(qemu_list)}")
    kernel_list: list[str | None] = list(dict.fromkeys(_split_list(kernels))) or [None]
    balance = durations or COUNTS
    try:
        weights = load_durations(balance)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    scenarios = load_scenarios([suite])
    if not scenarios:
        raise UsageError(f"ci plan: no scenario found in {suite}")
    loads = shard_loads([s.id for s in scenarios], weights, shards)
    prefix = shlex.split(migconform)
    if not prefix:
        raise UsageError("ci plan: --migconform must name a command")
    return Plan(
        suite=suite,
        qemus=qemu_list,
        kernels=kernel_list,
        shards=shards,
        balance=balance,
        migconform=prefix,
        keep_logs=keep_logs,
        run_args=shlex.split(run_args),
        plan_args=list(plan_args),
        shard_members=[members for members, _ in loads],
        shard_loads_ms=[load for _, load in loads],
    )


def load_plan(path: Path) -> Plan:
    import json

    try:
        return Plan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such plan file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a usable plan: {exc}") from None
