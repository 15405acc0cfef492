"""contract/: one action table drives both backends, and the shared texts and rules are what both write."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from contract import actions
from contract.actions import EXECUTOR_HANDLERS, HANDLER_PREFIX, MODEL_HANDLERS, STEP_ACTIONS, resolve_handlers
from contract.messages import SOURCE_MIGRATION_END, vm_exited, wait_timed_out, without_wait_bound
from contract.policy import DEFAULT_WAIT_TIMEOUT_S, paced_for_postcopy
from contract.scenario import ACTIONS, Step
from contract.sizes import parse_mib, whole_mib
from harness.errors import MigrationTimeout, VmDied


def _namespace(where: str) -> Any:
    """``module`` or ``module:Class`` (contract.actions names the backends' handler holders so)."""
    module_name, _, attribute = where.partition(":")
    namespace: Any = importlib.import_module(module_name)
    return getattr(namespace, attribute) if attribute else namespace


def _handlers(where: str) -> set[str]:
    namespace = _namespace(where)
    return {name for name in dir(namespace) if name.startswith(HANDLER_PREFIX) and callable(getattr(namespace, name))}


@pytest.mark.parametrize(("backend", "where"), [("model", MODEL_HANDLERS), ("executor", EXECUTOR_HANDLERS)])
def test_every_action_has_a_handler_and_every_handler_an_action(backend: str, where: str) -> None:
    named = {actions.handler_name(action, backend) for action in STEP_ACTIONS}
    assert named <= _handlers(where), f"{backend}: actions without a handler: {sorted(named - _handlers(where))}"
    assert _handlers(where) <= named, f"{backend}: handlers for no action: {sorted(_handlers(where) - named)}"
    assert set(resolve_handlers(_namespace(where), backend)) == set(ACTIONS)


def test_a_missing_handler_fails_naming_it() -> None:
    with pytest.raises(LookupError, match=r"model has no handler for step action\(s\): set-capabilities"):
        resolve_handlers(object(), "model")


def test_each_action_is_in_the_table_once() -> None:
    assert len(set(ACTIONS)) == len(ACTIONS) == len(STEP_ACTIONS)


def test_stages() -> None:
    assert actions.stage_of("wait") == "migration"
    assert actions.stage_of("set-capabilities") == "set-capabilities"
    assert actions.stage_of("qmp") == "qmp"
    assert actions.stage_of("not-an-action") == "not-an-action"


def test_the_harness_raises_the_texts_the_model_predicts() -> None:
    timeout = MigrationTimeout(SOURCE_MIGRATION_END, DEFAULT_WAIT_TIMEOUT_S, "colo")
    assert str(timeout) == "timed out after 60 s waiting for the source migration to end (last seen: colo)"
    assert str(timeout) == wait_timed_out(SOURCE_MIGRATION_END, 60, "colo")
    assert str(MigrationTimeout("x", 2.5)) == "timed out after 2.5 s waiting for x"
    died = VmDied("destination", 1, "load of migration failed: Invalid argument")
    assert str(died) == vm_exited("destination", 1, "load of migration failed: Invalid argument")
    assert str(died) == "destination QEMU exited with status 1: load of migration failed: Invalid argument"
    assert without_wait_bound(wait_timed_out("x", 20)) == without_wait_bound(wait_timed_out("x", 60))


def test_postcopy_pacing_rule() -> None:
    assert paced_for_postcopy([Step("migrate"), Step("start-postcopy"), Step("wait")])
    assert not paced_for_postcopy([Step("migrate"), Step("wait")])
    assert not paced_for_postcopy(
        [Step("set-parameters", parameters={"max-bandwidth": 5}), Step("migrate"), Step("start-postcopy")]
    )


def test_one_size_parser() -> None:
    assert parse_mib("64M") == 64
    assert parse_mib("1.5G") == 1536
    assert parse_mib("512MiB") == 512
    assert parse_mib("2048K") == 2
    assert parse_mib("1T") == 1024 * 1024
    assert whole_mib("4G") == 4096
    with pytest.raises(ValueError, match="not a whole number of MiB"):
        whole_mib("1000K")
    with pytest.raises(ValueError, match="expected a number"):
        parse_mib("lots")


def test_every_personality_is_modelled_and_offered_by_the_lab() -> None:
    from contract.scenario import PERSONALITIES
    from harness.vfio_lab.mdev import PERSONALITIES as LAB
    from reference_impl.vfio.personality import PERSONALITIES as MODELLED

    assert tuple(MODELLED) == PERSONALITIES == tuple(LAB)
