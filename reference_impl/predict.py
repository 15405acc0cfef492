"""``predict``: the Outcome real QEMU gives for a scenario, following the contract's execution rules.

(docs/scenario-format.md, "How a scenario is executed".) The source starts first; if it
refuses, the destination is never started. Steps run in order (``expand_steps``) and the first refused
command ends the scenario. A VM that died is ``null`` and makes the verdict ``failed``.
"""

from __future__ import annotations

import importlib
import itertools
from typing import TYPE_CHECKING

from contract.actions import stage_of
from contract.guest_rules import guest_runs
from contract.host import HostFacts
from contract.outcome import Outcome, VmState
from contract.scenario import Scenario
from contract.sizes import whole_mib
from contract.versions import Version, profile_for
from reference_impl import migration as mig
from reference_impl.cross import check_pair
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine, realize
from reference_impl.steps import expanded, run_step
from reference_impl.timing import check_end, check_step

if TYPE_CHECKING:
    from reference_impl.vfio.events import VfioEvents

BACKEND = "reference"
# Outcome.extra key: why a VFIO scenario's vfio_states is not predicted (harness.compare leaves it out).
VFIO_UNPREDICTED = "vfio_states_unpredicted"

_PROFILES: dict[Version | str, tuple[Version, str]] = {}


def _profile(version: Version | str) -> tuple[Version, str]:
    """(profile, its short name), memoised: the harness asks for the same few versions over and over."""
    hit = _PROFILES.get(version)
    if hit is None:
        profile = profile_for(version)
        hit = _PROFILES[version] = (profile, profile.short)
    return hit


def _state(vm: Machine | None) -> VmState | None:
    if vm is None or not vm.alive:
        return None
    return VmState(status=vm.status, runstate=vm.runstate)


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
    return Outcome(
        scenario=scenario.id,
        backend=BACKEND,
        qemu_version=short,
        verdict=verdict,
        stage=stage,
        error=error,
        source=_state(src),
        destination=_state(dst),
        events=events,
    )


def predict(
    scenario: Scenario, version: Version | str, host: HostFacts, destination_version: Version | str | None = None
) -> Outcome:
    """The model's Outcome for ``scenario`` on QEMU ``version`` (mapped to its profile) and ``host``.

    ``destination_version``: the destination's QEMU in a cross-version item (None: the source's, and the
    prediction is exactly the same-version one). Two different profiles need the cross-version rules
    (:func:`cross_profile`); without them the item is not modelled rather than guessed.

    A scenario with vfio-pci devices also gets ``vfio_states`` (reference_impl.vfio.events): ``{}`` when no
    device sends VFIO_MIGRATION events, the sequences when the model follows every step, else null with
    ``extra["vfio_states_unpredicted"]`` saying why (the comparison then leaves the field out).
    """
    try:
        destination = cross_profile(version, destination_version)
        outcome = _predict(scenario, version, host, destination)
    except NotModelled as limit:
        outcome = not_modelled(scenario, _profile(version)[1], limit.what)
        _mark_destination(outcome, destination_version)
        return outcome
    _mark_destination(outcome, destination_version)
    if guest_runs(scenario):
        # reference_impl.guest (the guest workload's prediction) is imported only for scenarios with a guest.
        from reference_impl.guest import predict_guest

        outcome.guest = predict_guest(scenario, outcome)
    return outcome


def cross_profile(version: Version | str, destination_version: Version | str | None) -> Version | None:
    """The destination's profile when it differs from the source's, else None (one profile for both).

    Raises NotModelled for a pair of profiles until the cross-version rules say how the two versions' streams
    and commands meet (reference_impl.cross, when present, lifts this by defining ``supported``)."""
    if destination_version is None:
        return None
    source, _ = _profile(version)
    destination, _ = _profile(destination_version)
    if destination == source:
        return None
    try:
        cross: object = importlib.import_module("reference_impl.cross")
    except ModuleNotFoundError:
        cross = None
    supported = getattr(cross, "supported", None)
    if supported is None or not supported(source, destination):
        raise NotModelled(f"cross-version pair {source.short} -> {destination.short}")
    return destination


def _mark_destination(outcome: Outcome, destination_version: Version | str | None) -> None:
    """A cross-version item's outcome names the destination's version (None/absent for one version)."""
    if destination_version is not None:
        outcome.destination_qemu_version = str(destination_version)


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


def _uuid(args: tuple[str, ...]) -> str | None:
    """``-uuid VALUE`` (qemu_uuid, qemu_uuid_set), lower-cased as qemu_uuid_parse reads it; the last one wins."""
    found = None
    for option, value in itertools.pairwise(args):
        if option in ("-uuid", "--uuid"):
            found = value.lower()
    return found


def _predict(
    scenario: Scenario, version: Version | str, host: HostFacts, destination_profile: Version | None = None
) -> Outcome:
    profile, short = _profile(version)
    vfio_scenario = bool(scenario.source.vfio_devices or scenario.destination.vfio_devices)
    source = realize(scenario.source, profile, host, "source")
    if isinstance(source, str):
        # No QEMU ran long enough to send anything: a VFIO scenario's prediction is "no events".
        outcome = _outcome(scenario, short, "refused", "startup", source, None, None)
        outcome.vfio_states = {} if vfio_scenario else None
        return outcome
    destination = realize(scenario.destination, destination_profile or profile, host, "destination")
    if isinstance(destination, str):
        # The source ran, but its start (the only thing it did) happened before QMP was negotiated.
        outcome = _outcome(scenario, short, "refused", "startup", destination, source, None)
        outcome.vfio_states = {} if vfio_scenario else None
        return outcome
    check_pair(source, destination)
    scene = mig.Scene(source, destination)
    scene.extra["uuids"] = (_uuid(scenario.source.args), _uuid(scenario.destination.args))
    # Memory a guest workload fills: the stream is that big, so a throttled migration outlasts the next step.
    filled = whole_mib(scenario.guest.memory) if scenario.guest is not None and guest_runs(scenario) else 0
    vfio = _vfio_events(scenario, source, destination)
    refused: tuple[str, str] | None = None
    for step in expanded(scenario):
        if "ended" in scene.extra:
            break
        check_step(source, destination, step, filled)
        snap = vfio.before(source, destination) if vfio is not None else None
        error = run_step(scene, scenario, step)
        if vfio is not None and snap is not None:
            vfio.after(step, error, snap, source, destination, "timeout" in scene.extra or "ended" in scene.extra)
        if error is not None:
            refused = (stage_of(step.action), error)
            break
        if "timeout" in scene.extra:
            break
    if refused is None and "timeout" not in scene.extra:
        check_end(source, destination, filled)
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
