"""The model's step handlers, one per action of contract.actions (whose table names them).

Each handler mirrors what the executor's handler of the same action does to real QEMU (harness.execution.steps) and
returns QEMU's error text for a refused step, or None. The dispatch (:data:`HANDLERS`) is built from the table
when this module is imported, so an action without a handler here fails at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from contract.actions import resolve_handlers
from contract.policy import POSTCOPY_PACING_BYTES_PER_S, paced_for_postcopy
from contract.scenario import Scenario, Step, expand_steps, migrate_transport
from reference_impl import migration as mig
from reference_impl import qmp_tls
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.qmp_commands import run_qmp
from reference_impl.qmp_jobs import load_action

StepHandler = Callable[[mig.Scene, Scenario, Step], "str | None"]
# migrate from the destination over unix: the executor's socket path does not exist (connect: ENOENT).
DESTINATION_UNIX_MISSING = "Failed to connect to '<path>': No such file or directory"

# Per Scenario object (frozen, so neither ever changes): its expanded steps and whether the executor paces it
# for postcopy. The entry keeps the scenario alive so that its id() is not reused while cached. Bounded:
# cleared when full.
_EXPANDED: dict[int, tuple[Scenario, tuple[Step, ...], bool]] = {}
_EXPANDED_MAX = 256


def _expansion(scenario: Scenario) -> tuple[tuple[Step, ...], bool]:
    hit = _EXPANDED.get(id(scenario))
    if hit is not None and hit[0] is scenario:
        return hit[1], hit[2]
    steps = expand_steps(scenario)
    paced = paced_for_postcopy(steps)
    if len(_EXPANDED) >= _EXPANDED_MAX:
        _EXPANDED.clear()
    _EXPANDED[id(scenario)] = (scenario, steps, paced)
    return steps, paced


def expanded(scenario: Scenario) -> tuple[Step, ...]:
    """:func:`contract.scenario.expand_steps`, memoised: the harness predicts the same scenarios over and over."""
    return _expansion(scenario)[0]


def _sides(scene: mig.Scene, side: str) -> tuple[Machine, ...]:
    if side == "destination":
        return (scene.destination,)
    if side == "both":
        return (scene.source, scene.destination)
    return (scene.source,)


def _on_sides(scene: mig.Scene, step: Step, command: Callable[[Machine], str | None]) -> str | None:
    """``command`` on each side the step names, in order; the first error ends the step."""
    for vm in _sides(scene, step.side):
        if not vm.alive:
            # The executor's command on a gone QEMU raises VmDied: the scenario ends as failed.
            scene.extra["ended"] = True
            return None
        error = command(vm)
        if error is not None:
            return error
    return None


def step_migrate(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    transport = migrate_transport(scenario, step)
    if step.side == "destination":
        # harness/pair.py migrate_from_destination: issued on the destination, to a target nobody reads
        # (tcp port 1, a unix path that does not exist); its pre-checks ("Guest is waiting for an incoming
        # migration") are the point. Once accepted, the executor waits (bounded) until it has left setup: the
        # connect has failed by then (socket_outgoing_migration -> migration_channel_connect, then 7.2
        # migrate_fd_connect -> migrate_fd_error, 10.0 migration_connect -> migration_connect_set_error: setup ->
        # failed; found by migconform fuzz on 10.0.2), or a file/exec stream is being written.
        dst = scene.destination
        missing = DESTINATION_UNIX_MISSING if transport == "unix" else None
        error = mig.migrate(dst, transport, peer_listening=False, path_error=missing)
        if error is None and dst.migration is not None:
            if dst.migration.failure is not None:
                mig.finish(scene, dst)
            else:
                mig.left_setup(dst)
        return error
    vm = scene.source
    if _expansion(scenario)[1]:
        mig.set_parameters(vm, {"max-bandwidth": POSTCOPY_PACING_BYTES_PER_S})
    if transport in mig.SOCKET_TRANSPORTS and not scene.socket_uri:
        dst = scene.destination
        error = mig.migrate_incoming(dst, transport)
        if error is not None:
            return error
        scene.socket_uri = True
    dst = scene.destination
    listening = dst.alive and dst.runstate == "inmigrate" and dst.incoming in mig.SOCKET_TRANSPORTS
    error = mig.migrate(vm, transport, peer_listening=listening or vm is dst)
    if error is None and listening:
        qmp_tls.connect(scene)
    if error is None and vm.migration is not None and vm.migration.failure is None:
        # The executor waits (bounded) until the migration has left setup before the next step.
        mig.left_setup(vm)
    return error


def step_wait(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    for vm in (scene.source, scene.destination):
        if vm.migration is not None and not vm.migration.raw:
            mig.finish(scene, vm)
        mig.finish_dump(vm)
    return None


def step_set_capabilities(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, lambda vm: mig.set_capabilities(vm, step.capabilities))


def step_set_parameters(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, lambda vm: mig.set_parameters(vm, step.parameters))


def _start_postcopy(vm: Machine) -> str | None:
    mig.left_setup(vm)
    return mig.start_postcopy(vm)


def step_start_postcopy(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, _start_postcopy)


def step_cancel(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    def cancel(vm: Machine) -> str | None:
        mig.left_setup(vm)
        return mig.cancel(scene, vm)

    return _on_sides(scene, step, cancel)


def step_cont(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, mig.cont)


def step_stop(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, mig.stop)


def step_migrate_continue(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, mig.migrate_continue)


def step_snapshot_save(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, mig.snapshot_save)


def step_snapshot_load(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, load_action)


def step_qmp(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    return _on_sides(scene, step, lambda vm: run_qmp(scene, vm, step.command or "", step.arguments))


def _unknown_action(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    """A step the loader would have refused (built in code): it does nothing, on VMs that are still there."""
    return _on_sides(scene, step, lambda vm: None)


HANDLERS: dict[str, StepHandler] = resolve_handlers(sys.modules[__name__], "model")


def run_step(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    """Run one step on the modelled pair: QEMU's error when it refuses the step, else None."""
    race, scene.connect_race = scene.connect_race, False
    if race and step.action != "wait" and step.side != "destination":
        raise NotModelled("a step on the source right after a raw migrate whose connect fails asynchronously")
    return HANDLERS.get(step.action, _unknown_action)(scene, scenario, step)
