"""The step actions of a scenario (docs/scenario-format.md, ``[[step]]``), one table for every reader.

For each action: the ``stage`` an outcome names when QEMU refuses the step, and the name of the handler that
runs it on each backend. The loader accepts exactly these actions, the model's step dispatch
(reference_impl.steps) and the executor's (harness.execution.steps) are built from the handler names, and
tests/unit/test_contract.py checks that every action has a handler on both and that neither has a handler
for an action that is not here, so adding an action means adding it here and on both backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Where each backend's handlers live (named, not imported: this package imports neither backend).
MODEL_HANDLERS = "reference_impl.steps"  # module: functions step_*(scene, scenario, step) -> error | None
EXECUTOR_HANDLERS = "harness.execution.steps"  # module: async functions step_*(context, step, stage, sides)
HANDLER_PREFIX = "step_"
BACKENDS = ("model", "executor")


@dataclass(frozen=True)
class StepAction:
    """One action: its refusal stage and its handler's name on the model and on the executor."""

    name: str
    stage: str
    model: str
    executor: str


# The contract's stages for the actions that have one ("migration" for wait: a wait that ends badly is the
# migration failing); every other action names itself (an extension: the contract allows new values).
STEP_ACTIONS: tuple[StepAction, ...] = (
    StepAction("set-capabilities", "set-capabilities", "step_set_capabilities", "step_set_capabilities"),
    StepAction("set-parameters", "set-parameters", "step_set_parameters", "step_set_parameters"),
    StepAction("migrate", "migrate", "step_migrate", "step_migrate"),
    StepAction("start-postcopy", "start-postcopy", "step_start_postcopy", "step_start_postcopy"),
    StepAction("cancel", "cancel", "step_cancel", "step_cancel"),
    StepAction("wait", "migration", "step_wait", "step_wait"),
    StepAction("cont", "cont", "step_cont", "step_vm_command"),
    StepAction("stop", "stop", "step_stop", "step_vm_command"),
    StepAction("snapshot-save", "snapshot-save", "step_snapshot_save", "step_snapshot_save"),
    StepAction("snapshot-load", "snapshot-load", "step_snapshot_load", "step_snapshot_load"),
    StepAction("qmp", "qmp", "step_qmp", "step_qmp"),
    StepAction("migrate-continue", "migrate-continue", "step_migrate_continue", "step_migrate_continue"),
)
ACTIONS_BY_NAME: Mapping[str, StepAction] = {action.name: action for action in STEP_ACTIONS}


def stage_of(action: str) -> str:
    """The stage of a refusal at a step of ``action`` (an action outside the table names itself)."""
    entry = ACTIONS_BY_NAME.get(action)
    return entry.stage if entry is not None else action


def handler_name(action: StepAction, backend: str) -> str:
    """``action``'s handler name on ``backend`` ("model" or "executor")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return action.model if backend == "model" else action.executor


def resolve_handlers(namespace: Any, backend: str) -> dict[str, Any]:
    """action -> its handler, looked up by name on ``namespace`` (a module or a class).

    Called once when a backend's module is imported, so a backend that lacks a handler fails at import,
    naming every missing one, rather than at the first scenario that uses the action."""
    handlers: dict[str, Any] = {}
    missing: list[str] = []
    for action in STEP_ACTIONS:
        name = handler_name(action, backend)
        handler = getattr(namespace, name, None)
        if handler is None:
            missing.append(f"{action.name} ({name})")
        handlers[action.name] = handler
    if missing:
        raise LookupError(f"{backend} has no handler for step action(s): {', '.join(missing)}")
    return handlers
