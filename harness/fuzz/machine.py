"""The hypothesis state machine: one rule per step action, each appending a step drawn from the binary's
vocabulary (harness.fuzz.vocabulary) and handing the sequence so far to the session, which compares it in
lockstep (harness.fuzz.lockstep) and raises on a divergence, so that hypothesis shrinks the sequence.

A sequence the model cannot follow (a ``not-modelled`` skip), an item the harness could not compare, or a new
divergence the round does not shrink ends the sequence: the machine then has only the ``idle`` rule, which runs
nothing, until hypothesis ends the example (at most :data:`~harness.fuzz.vocabulary.MAX_STEPS` rules). A prefix
that ends while a migration runs at full speed (``racing``, reference_impl.timing) leaves only the ``wait`` rule:
the model follows no other step there, so drawing one would only end the sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from contract.scenario import Step
from harness.fuzz.vocabulary import Vocabulary, step_strategies


class Sink(Protocol):
    """What the machine reports to (harness.fuzz.session.FuzzSession)."""

    def on_prefix(self, steps: list[Step]) -> bool | str:
        """Compare ``steps``; True when the sequence cannot go on, ``"wait"`` when only a wait step may follow
        (a migration runs at full speed: the model follows no other step, reference_impl.timing), False
        otherwise. Raises on a divergence."""
        ...

    def on_sequence_end(self, steps: list[Step]) -> None: ...


class FuzzMachineBase(RuleBasedStateMachine):
    """The sequence being built; subclasses made by :func:`machine_class` carry the rules and the sink."""

    sink: Sink

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        self.ended = False
        self.wait_only = False

    def add(self, step: Step) -> None:
        self.steps.append(step)
        answer = self.sink.on_prefix(list(self.steps))
        self.wait_only = answer == "wait"
        self.ended = answer is True

    def teardown(self) -> None:
        self.sink.on_sequence_end(list(self.steps))


def _open(machine: Any) -> bool:
    return not machine.ended and not machine.wait_only


def _open_for_wait(machine: Any) -> bool:
    return not machine.ended


def _closed(machine: Any) -> bool:
    return bool(machine.ended) or (machine.wait_only and not _has_wait(machine))


def _has_wait(machine: Any) -> bool:
    return hasattr(machine, "wait")


def _rule_for(action: str) -> Callable[[FuzzMachineBase, Step], None]:
    def add_step(self: FuzzMachineBase, step: Step) -> None:
        self.add(step)

    add_step.__name__ = action.replace("-", "_")
    return add_step


def _idle(self: FuzzMachineBase) -> None:
    """The sequence has ended: nothing more runs."""


def machine_class(vocab: Vocabulary, sink: Sink) -> type[FuzzMachineBase]:
    """A state machine class for ``vocab`` reporting to ``sink`` (hypothesis instantiates it without arguments,
    so the sink is a class attribute)."""
    namespace: dict[str, Any] = {"sink": sink}
    for action, strategy in step_strategies(vocab).items():
        name = action.replace("-", "_")
        gate = _open_for_wait if action == "wait" else _open
        namespace[name] = precondition(gate)(rule(step=strategy)(_rule_for(action)))
    namespace["idle"] = precondition(_closed)(rule()(_idle))
    return type("FuzzMachine", (FuzzMachineBase,), namespace)
