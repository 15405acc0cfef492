"""``predict``: the Outcome real QEMU gives for a scenario, following the contract's execution rules.

(docs/scenario-format.md, "How a scenario is executed".) The source starts first; if it
refuses, the destination is never started. Steps run in order (``expand_steps``) and the first refused
command ends the scenario. A VM that died is ``null`` and makes the verdict ``failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_impl import migration as mig
from reference_impl.host import HostFacts
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine, realize
from reference_impl.outcome import Outcome, VmState
from reference_impl.qmp_commands import run_qmp
from reference_impl.scenario import Scenario, Step, expand_steps, migrate_transport
from reference_impl.versions import Version, profile_for

if TYPE_CHECKING:
    from reference_impl.vfio.events import VfioEvents

BACKEND = "reference"
# Outcome.extra key: why a VFIO scenario's vfio_states is not predicted (harness.compare leaves it out).
VFIO_UNPREDICTED = "vfio_states_unpredicted"

# Stage of a refused step, as the executor names it (harness/executor.py STAGE_OF_ACTION): the contract's
# stages for the actions that have one, "migration" for wait, else the action's own name (qmp steps: "qmp").
_STAGES = {
    "set-capabilities": "set-capabilities",
    "set-parameters": "set-parameters",
    "migrate": "migrate",
    "start-postcopy": "start-postcopy",
    "wait": "migration",
}


_PROFILES: dict[Version | str, tuple[Version, str]] = {}
# Expanded steps per Scenario object (frozen, so the expansion never changes); the entry keeps the scenario
# alive so that its id() is not reused while cached. Bounded: cleared when full.
_STEPS: dict[int, tuple[Scenario, tuple[Step, ...]]] = {}
_STEPS_MAX = 256


# harness/executor.py _pace_for_postcopy: before the source's migrate, a scenario with a start-postcopy step
# that sets no max-bandwidth itself gets max-bandwidth 1,000,000 B/s, so that the postcopy switch happens.
POSTCOPY_PACING_BYTES_PER_S = 1_000_000
_PACED: dict[int, tuple[Scenario, bool]] = {}


def _paced_for_postcopy(scenario: Scenario) -> bool:
    hit = _PACED.get(id(scenario))
    if hit is not None and hit[0] is scenario:
        return hit[1]
    steps = _steps(scenario)
    paced = any(s.action == "start-postcopy" for s in steps) and not any(
        "max-bandwidth" in s.parameters for s in steps if s.action == "set-parameters"
    )
    if len(_PACED) >= _STEPS_MAX:
        _PACED.clear()
    _PACED[id(scenario)] = (scenario, paced)
    return paced


def _profile(version: Version | str) -> tuple[Version, str]:
    """(profile, its short name), memoised: the harness asks for the same few versions over and over."""
    hit = _PROFILES.get(version)
    if hit is None:
        profile = profile_for(version)
        hit = _PROFILES[version] = (profile, profile.short)
    return hit


def _steps(scenario: Scenario) -> tuple[Step, ...]:
    hit = _STEPS.get(id(scenario))
    if hit is not None and hit[0] is scenario:
        return hit[1]
    steps = expand_steps(scenario)
    if len(_STEPS) >= _STEPS_MAX:
        _STEPS.clear()
    _STEPS[id(scenario)] = (scenario, steps)
    return steps


def _state(vm: Machine | None) -> VmState | None:
    if vm is None or not vm.alive:
        return None
    return VmState(status=vm.status, runstate=vm.runstate)


def _sides(scene: mig.Scene, side: str) -> tuple[Machine, ...]:
    if side == "destination":
        return (scene.destination,)
    if side == "both":
        return (scene.source, scene.destination)
    return (scene.source,)


def _run_step(scene: mig.Scene, scenario: Scenario, step: Step) -> str | None:
    action = step.action
    if action == "migrate":
        transport = migrate_transport(scenario, step)
        if step.side == "destination":
            # harness/pair.py migrate_from_destination: issued on the destination, to a target nobody reads
            # (tcp port 1); its pre-checks ("Guest is waiting for an incoming migration") are the point.
            return mig.migrate(scene.destination, transport, peer_listening=False)
        vm = scene.source
        if _paced_for_postcopy(scenario):
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
        if error is None and vm.migration is not None and vm.migration.failure is None:
            # The executor waits (bounded) until the migration has left setup before the next step.
            mig.left_setup(vm)
        return error
    if action == "wait":
        for vm in (scene.source, scene.destination):
            if vm.migration is not None:
                mig.finish(scene, vm)
            mig.finish_dump(vm)
        return None
    for vm in _sides(scene, step.side):
        if not vm.alive:
            # The executor's command on a gone QEMU raises VmDied: the scenario ends as failed.
            scene.extra["ended"] = True
            return None
        if action == "set-capabilities":
            error = mig.set_capabilities(vm, step.capabilities)
        elif action == "set-parameters":
            error = mig.set_parameters(vm, step.parameters)
        elif action == "start-postcopy":
            mig.left_setup(vm)
            error = mig.start_postcopy(vm)
        elif action == "cancel":
            mig.left_setup(vm)
            error = mig.cancel(scene, vm)
        elif action == "cont":
            error = mig.cont(vm)
        elif action == "stop":
            error = mig.stop(vm)
        elif action == "migrate-continue":
            error = mig.migrate_continue(vm)
        elif action == "snapshot-save":
            error = mig.snapshot_save(vm)
        elif action == "qmp":
            error = run_qmp(scene, vm, step.command or "", step.arguments)
        else:
            error = None
        if error is not None:
            return error
    return None


def _stage(step: Step) -> str:
    return _STAGES.get(step.action, step.action)


def _outcome(
    scenario: Scenario,
    short: str,
    verdict: str,
    stage: str | None,
    error: str | None,
    src: Machine | None,
    dst: Machine | None,
    events: dict[str, list[str]] | None = None,
) -> Outcome:
    return Outcome(scenario=scenario.id, backend=BACKEND, qemu_version=short, verdict=verdict, stage=stage,
                   error=error, source=_state(src), destination=_state(dst), events=events)


def predict(scenario: Scenario, version: Version | str, host: HostFacts) -> Outcome:
    """The model's Outcome for ``scenario`` on QEMU ``version`` (mapped to its profile) and ``host``.

    A scenario with vfio-pci devices also gets ``vfio_states`` (reference_impl.vfio.events): ``{}`` when no
    device sends VFIO_MIGRATION events, the sequences when the model follows every step, else null with
    ``extra["vfio_states_unpredicted"]`` saying why (the comparison then leaves the field out).
    """
    try:
        outcome = _predict(scenario, version, host)
    except NotModelled as limit:
        return not_modelled(scenario, _profile(version)[1], limit.what)
    if getattr(scenario, "guest", None) is not None or "guest" in scenario.requires:
        # reference_impl.guest (the guest workload's prediction) is imported only for scenarios with a guest.
        from reference_impl.guest import predict_guest

        outcome.guest = predict_guest(scenario, outcome)
    return outcome


def not_modelled(scenario: Scenario, short: str, what: str) -> Outcome:
    """The outcome of a scenario the model cannot follow: skipped, never compared, and saying what is missing
    (the QEMU side still runs: its outcome is the truth a model fix starts from)."""
    return Outcome(
        scenario=scenario.id,
        backend=BACKEND,
        qemu_version=short,
        verdict="skipped",
        skip_reason=f"not modelled: {what}",
        not_modelled=what,
    )


def _predict(scenario: Scenario, version: Version | str, host: HostFacts) -> Outcome:
    profile, short = _profile(version)
    vfio_scenario = bool(scenario.source.vfio_devices or scenario.destination.vfio_devices)
    source = realize(scenario.source, profile, host, "source")
    if isinstance(source, str):
        # No QEMU ran long enough to send anything: a VFIO scenario's prediction is "no events".
        outcome = _outcome(scenario, short, "refused", "startup", source, None, None)
        outcome.vfio_states = {} if vfio_scenario else None
        return outcome
    destination = realize(scenario.destination, profile, host, "destination")
    if isinstance(destination, str):
        # The source ran, but its start (the only thing it did) happened before QMP was negotiated.
        outcome = _outcome(scenario, short, "refused", "startup", destination, source, None)
        outcome.vfio_states = {} if vfio_scenario else None
        return outcome
    scene = mig.Scene(source, destination)
    vfio = _vfio_events(scenario, source, destination)
    refused: tuple[str, str] | None = None
    for step in _steps(scenario):
        if "ended" in scene.extra:
            break
        snap = vfio.before(source, destination) if vfio is not None else None
        error = _run_step(scene, scenario, step)
        if vfio is not None and snap is not None:
            vfio.after(step, error, snap, source, destination, "timeout" in scene.extra or "ended" in scene.extra)
        if error is not None:
            refused = (_stage(step), error)
            break
        if "timeout" in scene.extra:
            break
    if vfio is not None:
        vfio.finished(source)
    if source.migration is not None and "timeout" not in scene.extra:
        mig.leave_pending(scene, source)
    # Like the executor's record: both sides once both VMs started, empty lists included.
    events = {"source": source.events, "destination": destination.events}
    outcome = _ended(scenario, short, scene, refused, source, destination, events)
    if vfio is not None:
        outcome.vfio_states = vfio.states()
        if vfio.unpredicted is not None:
            outcome.extra[VFIO_UNPREDICTED] = vfio.unpredicted
    return outcome


def _vfio_events(scenario: Scenario, source: Machine, destination: Machine) -> VfioEvents | None:
    """The VFIO_MIGRATION follower for a scenario with vfio-pci devices (None for the others)."""
    if not (scenario.source.vfio_devices or scenario.destination.vfio_devices):
        return None
    from reference_impl.vfio.events import track

    events = track(scenario, source, destination)
    events.started(source)
    return events


def _ended(
    scenario: Scenario,
    short: str,
    scene: mig.Scene,
    refused: tuple[str, str] | None,
    source: Machine,
    destination: Machine,
    events: dict[str, list[str]],
) -> Outcome:
    if refused is not None:
        return _outcome(scenario, short, "refused", refused[0], refused[1], source, destination, events)
    if "timeout" in scene.extra:
        return _outcome(scenario, short, "failed", "migration", scene.extra["timeout"], source, destination, events)
    dead = [vm for vm in (source, destination) if not vm.alive]
    if dead or source.status == "failed" or destination.status == "failed":
        error = source.error_desc or destination.error_desc
        if error is None and dead:
            error = dead[0].exit_line
        if error is None:
            error = scene.extra.get("source_stderr")
        return _outcome(scenario, short, "failed", "migration", error, source, destination, events)
    return _outcome(scenario, short, "completed", None, None, source, destination, events)
