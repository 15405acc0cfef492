"""A CI plan: the cells of a matrix (QEMU x lab kernel x shard, and source:destination pair x shard) and the
exact command each job runs.

One plan is rendered three ways (harness.ci.render: GitLab, GitHub, JSON) and executed here by
``migconform ci run-local``; ``migconform merge --plan`` checks that the results it is given are exactly its
cells. A cell's QEMU is whatever ``migconform run --qemu`` takes (a version among those found, a path), or
``build:SPEC`` for a QEMU ``migconform qemu build SPEC`` makes first. A pair cell migrates from one QEMU to
another over the cross-version suite (``migconform run CROSS --pair SRC:DST``): its shards are computed over
that suite, so the plan records two shard memberships. With lab kernels, pair cells run on one of them
(:func:`pair_kernel`), so the cross-version VFIO scenarios run in the lab as the same-version ones do; a
kernel axis for pairs too would run every cross scenario once more per kernel for the few that use a lab.
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
from harness.suite import SUITE_DIR

PLAN_VERSION = 1
BUILD_PREFIX = "build:"
RESULTS_ROOT = "ci-results"
LAB_SETUP = "bash scripts/setup-lab.sh"  # docs/vfio-lab.md: what a job for a kernel runs first
NO_LAB_SETUP = "none"
# The cross-version suite a pair cell runs (harness.run_pairs.CROSS_SUITE under the bundled suite).
CROSS_SUITE = "harness/suite/cross"


@dataclass(frozen=True)
class Cell:
    """One job of the matrix. ``kernel`` None: no VFIO lab (VFIO scenarios skip for want of a device)."""

    qemu: str
    kernel: str | None
    shard: int
    shards: int
    destination: str | None = None  # a pair cell's destination QEMU (``qemu`` is then its source)

    @property
    def id(self) -> str:
        kernel = self.kernel or "none"
        head = f"p{self.qemu}_{self.destination}" if self.destination else f"q{self.qemu}"
        return _slug(f"{head}-k{kernel}-s{self.shard}of{self.shards}")

    @property
    def label(self) -> str:
        """The QEMU as the plan names it: ``10.0.2``, or ``7.2.22:10.0.2`` for a pair."""
        return f"{self.qemu}:{self.destination}" if self.destination else self.qemu

    @property
    def builds(self) -> list[str]:
        """Every ``migconform qemu build`` SPEC the cell needs first (a pair may build both sides)."""
        specs = [_build_spec(side) for side in (self.qemu, self.destination or "")]
        return list(dict.fromkeys(spec for spec in specs if spec))

    @property
    def destination_arg(self) -> str | None:
        """What a pair cell's destination side is given as (a built one found by its release)."""
        return _qemu_arg(self.destination) if self.destination else None

    @property
    def shard_text(self) -> str:
        return f"{self.shard}/{self.shards}"

    @property
    def build(self) -> str | None:
        """The ``migconform qemu build`` SPECs of the built QEMUs (space-separated), None for found ones."""
        return " ".join(self.builds) or None

    @property
    def qemu_arg(self) -> str:
        """What ``--qemu`` gets: a built QEMU is then found by its release, like an installed one."""
        return _qemu_arg(self.qemu)

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "qemu": self.qemu, "kernel": self.kernel, "shard": self.shard_text}
        return {**out, "destination": self.destination} if self.destination else out


def _build_spec(qemu: str) -> str | None:
    return qemu.removeprefix(BUILD_PREFIX) if qemu.startswith(BUILD_PREFIX) else None


def _qemu_arg(qemu: str) -> str:
    return _build_spec(qemu) or qemu


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
    pairs: list[tuple[str, str]] = field(default_factory=list)
    cross_suite: str = CROSS_SUITE
    pair_shard_members: list[list[str]] = field(default_factory=list)
    pair_shard_loads_ms: list[int] = field(default_factory=list)
    lab_setup: str = LAB_SETUP
    pair_kernel: str | None = None  # the pair cells' lab kernel (None: no lab, as in a plan without kernels)

    @property
    def cells(self) -> list[Cell]:
        plain = [
            Cell(qemu, kernel, k, self.shards)
            for qemu in self.qemus
            for kernel in self.kernels
            for k in range(1, self.shards + 1)
        ]
        kernel = self.pair_kernel
        pairs = [Cell(src, kernel, k, self.shards, dst) for src, dst in self.pairs for k in range(1, self.shards + 1)]
        return plain + pairs

    def cell(self, cell_id: str) -> Cell | None:
        return next((c for c in self.cells if c.id == cell_id), None)

    def members(self, cell: Cell) -> list[str]:
        """The scenarios the cell's run picks (its suite's shard)."""
        table = self.pair_shard_members if cell.destination else self.shard_members
        return table[cell.shard - 1]

    def results_dir(self, cell: Cell) -> str:
        return f"{RESULTS_ROOT}/{cell.id}"

    def results_path(self, cell: Cell) -> str:
        return f"{self.results_dir(cell)}/results.json"

    def run_argv(self, cell: Cell) -> list[str]:
        """The exact command of the cell's job (relative paths: the job runs in the project's folder)."""
        if cell.destination_arg is not None:
            return self.pair_words(cell.qemu_arg, cell.destination_arg, cell.kernel, cell.shard_text, cell.id)
        return self.run_words(cell.qemu_arg, cell.kernel, cell.shard_text, cell.id)

    def run_words(self, qemu: str, kernel: str | None, shard: str, cell_id: str) -> list[str]:
        """:meth:`run_argv` from its variable parts, so a CI file can write it once with variables."""
        argv = [*self.migconform, "run", self.suite, "--qemu", qemu]
        return argv + _lab_kernel_words(kernel) + self._common_words(shard, cell_id)

    def pair_words(self, source: str, destination: str, kernel: str | None, shard: str, cell_id: str) -> list[str]:
        """A pair cell's command: the cross-version suite from one QEMU to another, sharded over that suite.
        Both are ``--qemu`` too, so that the run's QEMUs are the pair's (as in ``run --cross --qemu ...``),
        not every QEMU the runner has."""
        argv = [*self.migconform, "run", self.cross_suite, "--qemu", source, "--qemu", destination]
        argv += ["--pair", f"{source}:{destination}", *_lab_kernel_words(kernel)]
        return argv + self._common_words(shard, cell_id)

    def _common_words(self, shard: str, cell_id: str) -> list[str]:
        out = f"{RESULTS_ROOT}/{cell_id}"
        argv = ["--shard", shard, "--balance", self.balance, "--cell", cell_id]
        argv += ["--json", f"{out}/results.json", "--junit", f"{out}/junit.xml", "--logs-dir", f"{out}/logs"]
        return [*argv, "--keep-logs", self.keep_logs, *self.run_args]

    def build_argvs(self, cell: Cell) -> list[list[str]]:
        return [[*self.migconform, "qemu", "build", spec] for spec in cell.builds]

    def build_argv(self, cell: Cell) -> list[str] | None:
        builds = self.build_argvs(cell)
        return builds[0] if builds else None

    def lab_words(self) -> list[str] | None:
        """The command that prepares a kernel's lab, without its ``--series S`` (None: the runners have it)."""
        return None if self.lab_setup == NO_LAB_SETUP else shlex.split(self.lab_setup)

    def lab_argv(self, cell: Cell) -> list[str] | None:
        """What a lab kernel's job runs before its run: scripts/setup-lab.sh builds that kernel's lab (cached,
        a no-op once built; docs/vfio-lab.md, "Kernel matrix")."""
        words = self.lab_words()
        return None if words is None or cell.kernel is None else [*words, "--series", cell.kernel]

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
            job: dict[str, Any] = {"id": cell.id, "cell": cell.to_json()}
            lab = self.lab_argv(cell)
            if lab:
                job["lab_argv"] = lab
            builds = self.build_argvs(cell)
            if builds:
                job["build_argv"] = builds[0]
                job["build_argvs"] = builds
            job["argv"] = self.run_argv(cell)
            job["results"] = self.results_path(cell)
            job["artifacts"] = [self.results_dir(cell) + "/"]
            jobs.append(job)
        plan_file = f"{RESULTS_ROOT}/plan.json"
        axes = {"qemu": self.qemus, "kernel": self.kernels, "shards": self.shards}
        if self.pair_kernel is not None:  # absent otherwise: a plan without kernels is written as it always was
            axes["pair_kernel"] = self.pair_kernel
        return {
            "migconform_ci_plan": PLAN_VERSION,
            "suite": self.suite,
            "cross_suite": self.cross_suite,
            "axes": {**axes, "pairs": [f"{s}:{d}" for s, d in self.pairs]},
            "balance": self.balance,
            "migconform": self.migconform,
            "keep_logs": self.keep_logs,
            "lab_setup": self.lab_setup,
            "run_args": self.run_args,
            "plan_args": self.plan_args,
            "shards": _shards_json(self.shard_members, self.shard_loads_ms),
            "pair_shards": _shards_json(self.pair_shard_members, self.pair_shard_loads_ms),
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
        pair_shards = data.get("pair_shards") or []
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
            pairs=[_split_pair(str(p)) for p in axes.get("pairs") or []],
            cross_suite=str(data.get("cross_suite") or CROSS_SUITE),
            pair_shard_members=[[str(s) for s in entry["scenarios"]] for entry in pair_shards],
            pair_shard_loads_ms=[int(entry["expected_ms"]) for entry in pair_shards],
            lab_setup=str(data.get("lab_setup") or LAB_SETUP),
            # Absent in a plan written before pair cells had a kernel: its pair cells (and their ids) had none.
            pair_kernel=None if axes.get("pair_kernel") is None else str(axes["pair_kernel"]),
        )


def _lab_kernel_words(kernel: str | None) -> list[str]:
    # The same as --vfio-provider mtty --vfio-option series=K.
    return [] if kernel is None else ["--lab-kernel", kernel]


def _shards_json(members: list[list[str]], loads: list[int]) -> list[dict[str, Any]]:
    n = len(members)
    return [
        {"shard": f"{i + 1}/{n}", "scenarios": m, "expected_ms": load}
        for i, (m, load) in enumerate(zip(members, loads, strict=True))
    ]


def _split_list(values: Sequence[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _split_pair(text: str) -> tuple[str, str]:
    """``SRC:DST``, either side possibly ``build:SPEC`` (``build:10.2.2:7.2.22``)."""
    words = text.split(":")
    sides: list[str] = []
    while words:
        word = words.pop(0)
        if word + ":" == BUILD_PREFIX and words:
            word = BUILD_PREFIX + words.pop(0)
        sides.append(word)
    if len(sides) != 2 or not all(sides):
        raise UsageError(f"ci plan: --pairs {text}: expected SOURCE:DESTINATION, e.g. 7.2.22:10.0.2")
    return sides[0], sides[1]


def plan_pairs(qemus: Sequence[str], pairs: Sequence[str], cross: bool) -> list[tuple[str, str]]:
    """``--pairs`` as named, then (``--cross``) every ordered pair of the plan's QEMUs not named yet."""
    out = [_split_pair(text) for text in _split_list(pairs)]
    if cross:
        if len(qemus) < 2:
            raise UsageError("ci plan: --cross needs two QEMUs at least (--qemu 7.2.22,10.0.2)")
        out += [(a, b) for a in qemus for b in qemus if a != b]
    unique = list(dict.fromkeys(out))
    if len(unique) != len(out) and not cross:
        raise UsageError(f"ci plan: a pair is named twice in {', '.join(_split_list(pairs))}")
    return unique


def plan_kernels(kernels: Sequence[str]) -> list[str | None]:
    """The kernel axis: series of the lab's table (harness.vfio_lab.kernels), ``all`` for every row, or
    ``available`` for the rows whose lab is built in this machine's cache; none: no lab."""
    from harness.vfio_lab.kernels import available_lab_kernels, lab_kernel, lab_kernels

    out: list[str | None] = []
    for name in _split_list(kernels):
        if name == "all":
            found = [k.series for k in lab_kernels()]
        elif name == "available":
            found = [str(row["series"]) for row in available_lab_kernels() if row["built"]]
            if not found:
                raise UsageError("ci plan: --kernels available: no lab kernel is built here (scripts/setup-lab.sh)")
        else:
            try:
                found = [lab_kernel(name).series]
            except ValueError as exc:
                raise UsageError(f"ci plan: --kernels: {exc}") from None
        out += [k for k in found if k not in out]
    return out or [None]


def pair_kernel(kernels: Sequence[str | None]) -> str | None:
    """The pair cells' lab kernel: the lab's default series when the plan has it (the lab every plain mtty run
    uses, with every personality the cross-version VFIO scenarios ask for), else the plan's first kernel;
    None without kernels."""
    from harness.vfio_lab.kernels import DEFAULT_SERIES

    named = [k for k in kernels if k]
    return DEFAULT_SERIES if DEFAULT_SERIES in named else next(iter(named), None)


def _default_cross_suite(suite: str) -> str:
    beside = Path(suite) / "cross"
    return str(beside) if beside.is_dir() else CROSS_SUITE


def _load(path: str) -> list[str]:
    """Scenario ids of a folder as the jobs will see it; the bundled cross suite from the package when the
    plan is written outside the project's folder."""
    from harness.loader import load_scenarios

    folder = Path(path)
    if not folder.exists() and path == CROSS_SUITE:
        folder = SUITE_DIR / "cross"
    return [s.id for s in load_scenarios([folder])]


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
    pairs: Sequence[str] = (),
    cross: bool = False,
    cross_suite: str | None = None,
    lab_setup: str = LAB_SETUP,
) -> Plan:
    """The plan for these axes; the shards are computed here exactly as each job's run computes its own."""
    qemu_list = _split_list(qemus)
    if not qemu_list:
        raise UsageError("ci plan: name the QEMUs of the matrix (--qemu 7.2.22,10.0.2 or build:10.2)")
    if len(set(qemu_list)) != len(qemu_list):
        raise UsageError(f"ci plan: a QEMU is named twice in {', '.join(qemu_list)}")
    pair_list = plan_pairs(qemu_list, pairs, cross)
    balance = durations or COUNTS
    try:
        weights = load_durations(balance)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ids = _load(suite)
    if not ids:
        raise UsageError(f"ci plan: no scenario found in {suite}")
    loads = shard_loads(ids, weights, shards)
    cross_path = cross_suite or _default_cross_suite(suite)
    pair_loads: list[tuple[list[str], int]] = []
    if pair_list:
        cross_ids = _load(cross_path)
        if not cross_ids:
            raise UsageError(f"ci plan: no cross-version scenario found in {cross_path} (--cross-suite)")
        pair_loads = shard_loads(cross_ids, weights, shards)
    prefix = shlex.split(migconform)
    if not prefix:
        raise UsageError("ci plan: --migconform must name a command")
    kernel_list = plan_kernels(kernels)
    plan = Plan(
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
        pairs=pair_list,
        cross_suite=cross_path,
        pair_shard_members=[members for members, _ in pair_loads],
        pair_shard_loads_ms=[load for _, load in pair_loads],
        lab_setup=lab_setup,
        pair_kernel=pair_kernel(kernel_list) if pair_list else None,
    )
    ids_seen = [c.id for c in plan.cells]
    if len(set(ids_seen)) != len(ids_seen):
        raise UsageError("ci plan: two cells would get the same id (QEMU names that differ only in punctuation)")
    return plan


def load_plan(path: Path) -> Plan:
    import json

    try:
        return Plan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such plan file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a usable plan: {exc}") from None
