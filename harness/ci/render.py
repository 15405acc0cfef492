"""A plan as a GitLab pipeline (``parallel:matrix``), a GitHub Actions workflow (``strategy.matrix``) or JSON.

Both CI files list every cell explicitly (one matrix entry per cell, with its id), so a reader finds each
job by name, and run one command template whose ``$CELL``/``${{ matrix.cell }}`` values expand to exactly
the plan's ``argv`` for that cell (tests/unit/test_ci_plan.py checks the expansion). Pair cells run another
command (the cross-version suite, ``--pair``), so they are a second matrix job the merge also waits for.
Cells' jobs keep their folder ``ci-results/<cell>/`` as an artifact even when they fail; the merge job runs
after all of them, whatever their status, re-creates the plan with the same options and merges with
``--plan``, so a missing or doubled cell fails it by name. The YAML is written here (no YAML library needed
at run time): every string is double-quoted JSON, which YAML reads as the same string.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from harness.ci.plan import RESULTS_ROOT, Cell, Plan

GITLAB_CELL_JOB = "migconform:cell"
GITLAB_PAIR_JOB = "migconform:pair"
GITLAB_MERGE_JOB = "migconform:merge"
GITHUB_CELL_JOB = "cell"
GITHUB_PAIR_JOB = "pair"
GITHUB_MERGE_JOB = "merge"
CACHE_ENV = "MIGCONFORM_CACHE"
# The jobs' migconform cache, in the checkout (CI caches keep only paths inside it): QEMU builds live there.
CI_CACHE = ".migconform-cache"


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.-]*$")
# Words YAML 1.1 readers (PyYAML, GitHub's ``on:``) take for booleans or null unless quoted.
_YAML11_WORDS = {"on", "off", "yes", "no", "y", "n", "true", "false", "null"}


def _key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) and key.lower() not in _YAML11_WORDS else _scalar(key)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if '"' in text and "\n" not in text:
        return "'" + text.replace("'", "''") + "'"  # a shell line reads better single-quoted
    return json.dumps(text)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of dicts, lists and scalars (the subset a CI file needs)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{_key(key)}:")
                lines.append(to_yaml(item, indent + 2))
            else:
                lines.append(f"{pad}{_key(key)}: {_empty(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_empty(item)}")
    else:
        lines.append(pad + _scalar(value))
    return "\n".join(lines)


def _empty(item: Any) -> str:
    if isinstance(item, dict):
        return "{}"
    if isinstance(item, list):
        return "[]"
    return _scalar(item)


def _template(plan: Plan, values: dict[str, str], cells: list[Cell], *, pair: bool) -> str:
    """The run command of every cell of a job as one shell line, each cell's own values as variables
    (double-quoted words, so that the shell or the CI expands them; every other word quoted as it is).
    Pair cells (``pair``) run another command than the QEMU cells, so they are a job of their own; either
    job's cells have a lab kernel when the plan has kernels."""
    kernel = values["kernel"] if any(c.kernel for c in cells) else None
    if pair:
        words = plan.pair_words(values["src"], values["dst"], kernel, values["shard"], values["cell"])
    else:
        words = plan.run_words(values["qemu"], kernel, values["shard"], values["cell"])
    marks = set(values.values())
    return " ".join(f'"{w}"' if any(m in w for m in marks) else shlex.quote(w) for w in words)


def _cell_vars(plan: Plan, cell: Cell) -> dict[str, str]:
    out = {"CELL": cell.id, "SHARD": cell.shard_text}
    if cell.destination_arg is not None:
        out["SRC"], out["DST"] = cell.qemu_arg, cell.destination_arg
    else:
        out["QEMU"] = cell.qemu_arg
    if cell.kernel:
        out["KERNEL"] = cell.kernel
    if cell.build:
        out["QEMU_BUILD"] = cell.build
    return out


def _groups(plan: Plan) -> list[tuple[bool, list[Cell]]]:
    """(pair?, cells) of each cell job: the QEMU cells, then the pair cells when there are any."""
    plain = [c for c in plan.cells if c.destination is None]
    pairs = [c for c in plan.cells if c.destination is not None]
    return [(False, plain)] + ([(True, pairs)] if pairs else [])


def _lab_line(plan: Plan, cells: list[Cell], kernel_var: str) -> list[str]:
    """The shell line that prepares a lab kernel's lab (docs/vfio-lab.md), when the job's cells have one."""
    words = plan.lab_words()
    if words is None or not any(c.kernel for c in cells):
        return []
    return [f'{shlex.join(words)} --series "{kernel_var}"']


def _builds(plan: Plan) -> bool:
    """Whether a cell builds its QEMU: only then do the jobs get a cache folder the CI keeps (a runner's own
    ``MIGCONFORM_CACHE``, with the QEMUs its set-up unpacked, is left alone otherwise)."""
    return any(c.build for c in plan.cells)


def _setup_lines(setup: list[str]) -> list[str]:
    return [line for line in setup if line.strip()]


def gitlab(plan: Plan, *, setup: list[str], stage: str, header: str) -> str:
    prefix = " ".join(shlex.quote(a) for a in plan.migconform)
    names = ("qemu", "src", "dst", "shard", "cell", "kernel")
    gl_vars = {name: f"${name.upper()}" for name in names}
    doc: dict[str, Any] = {}
    for pair, cells in _groups(plan):
        lab = _lab_line(plan, cells, "$KERNEL")
        cell_job: dict[str, Any] = {
            "stage": stage,
            "variables": {CACHE_ENV: f"$CI_PROJECT_DIR/{CI_CACHE}"} if _builds(plan) else {},
            "parallel": {"matrix": [_cell_vars(plan, c) for c in cells]},
            "script": [
                *_setup_lines(setup),
                f'for spec in ${{QEMU_BUILD:-}}; do {prefix} qemu build "$spec"; done',
                *(f'if [ -n "${{KERNEL:-}}" ]; then {line}; fi' for line in lab),
                _template(plan, gl_vars, cells, pair=pair),
            ],
            "artifacts": {"when": "always", "expire_in": "1 week", "paths": [f"{RESULTS_ROOT}/"]},
        }
        if _builds(plan):
            cell_job["cache"] = {"key": "migconform-qemu-$QEMU_BUILD", "paths": [f"{CI_CACHE}/qemu-builds/"]}
        doc[GITLAB_PAIR_JOB if pair else GITLAB_CELL_JOB] = cell_job
    merge_cmd = plan.to_json()["merge"]
    doc[GITLAB_MERGE_JOB] = {
        "stage": stage,
        "needs": [{"job": job, "artifacts": True} for job in doc],
        "when": "always",
        "script": [*_setup_lines(setup), shlex.join(merge_cmd["plan_argv"]), shlex.join(merge_cmd["argv"])],
        "artifacts": {
            "when": "always",
            "expire_in": "4 weeks",
            "paths": [f"{RESULTS_ROOT}/"],
            "reports": {"junit": f"{RESULTS_ROOT}/merged.xml"},
        },
    }
    return header + to_yaml(doc) + "\n"


def github(plan: Plan, *, setup: list[str], runs_on: str, header: str) -> str:
    gh_vars = {
        name: "${{ matrix.%s }}" % name  # noqa: UP031 - GitHub's braces
        for name in ("qemu", "src", "dst", "shard", "cell", "kernel")
    }
    prefix = shlex.join(plan.migconform)
    checkout = {"uses": "actions/checkout@v4"}
    setup_steps = [{"name": "set up migconform", "run": line} for line in _setup_lines(setup)]
    env = {CACHE_ENV: "${{ github.workspace }}/" + CI_CACHE} if _builds(plan) else {}
    jobs: dict[str, Any] = {}
    for pair, cells in _groups(plan):
        include = []
        for cell in cells:
            entry = {k.lower(): v for k, v in _cell_vars(plan, cell).items()}
            entry.setdefault("qemu_build", "")
            include.append(entry)
        steps: list[dict[str, Any]] = [checkout, *setup_steps]
        if _builds(plan):
            steps.append(
                {
                    "uses": "actions/cache@v4",
                    "if": "matrix.qemu_build != ''",
                    "with": {"path": f"{CI_CACHE}/qemu-builds", "key": "migconform-qemu-${{ matrix.qemu_build }}"},
                }
            )
            steps.append(
                {
                    "name": "build QEMU",
                    "if": "matrix.qemu_build != ''",
                    "run": f'for spec in ${{{{ matrix.qemu_build }}}}; do {prefix} qemu build "$spec"; done',
                }
            )
        for line in _lab_line(plan, cells, gh_vars["kernel"]):
            steps.append({"name": "prepare the VFIO lab", "if": "matrix.kernel != ''", "run": line})
        steps.append({"name": "run the cell", "run": _template(plan, gh_vars, cells, pair=pair)})
        steps.append(
            {
                "uses": "actions/upload-artifact@v4",
                "if": "always()",
                "with": {"name": "migconform-${{ matrix.cell }}", "path": f"{RESULTS_ROOT}/"},
            }
        )
        jobs[GITHUB_PAIR_JOB if pair else GITHUB_CELL_JOB] = {
            "runs-on": runs_on,
            "env": env,
            "strategy": {"fail-fast": False, "matrix": {"include": include}},
            "steps": steps,
        }
    merge_cmd = plan.to_json()["merge"]
    merge_steps: list[dict[str, Any]] = [
        checkout,
        *setup_steps,
        {
            "uses": "actions/download-artifact@v4",
            "with": {"pattern": "migconform-*", "path": f"{RESULTS_ROOT}/", "merge-multiple": True},
        },
        {"name": "merge", "run": shlex.join(merge_cmd["plan_argv"]) + "\n" + shlex.join(merge_cmd["argv"])},
        {
            "uses": "actions/upload-artifact@v4",
            "if": "always()",
            "with": {"name": "migconform-merged", "path": f"{RESULTS_ROOT}/"},
        },
    ]
    jobs[GITHUB_MERGE_JOB] = {
        "runs-on": runs_on,
        "needs": list(jobs),
        "if": "always()",
        "env": env,
        "steps": merge_steps,
    }
    doc = {"name": "migconform", "on": {"push": {}, "pull_request": {}, "workflow_dispatch": {}}, "jobs": jobs}
    return header + to_yaml(doc) + "\n"


def as_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2) + "\n"
