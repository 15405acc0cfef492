"""The hypothesis state machine: one rule per step action, each appending a step drawn from the binary's
vocabulary (harness.fuzz.vocabulary) and handing the sequence so far to the session, which compares it in
lockstep (harness.fuzz.lockstep) and raises on a divergence, so that hypothesis shrinks the sequence.

A sequence the model cannot follow (a ``not-modelled`` skip), an item the harness could not compare, or a new
divergence the round does not shrink ends the sequence: the machine then has only the ``idle`` rule, which runs
nothing, until hypothesis ends the example (at most :data:`~harness.fuzz.vocabulary.MAX_STEPS` rules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from contract.scenario import Step
from harness.fuzz.vocabulary import Vocabulary, step_strategies


class Sink(Protocol):
    """What the machine reports to (harness.fuzz.session.FuzzSession)."""

    def on_prefix(self, steps: list[Step]) -> bool:
        """Compare ``steps``; True when the sequence cannot go on. Raises on a divergence."""
        ...

    def on_sequence_end(self, steps: list[Step]) -> None: ...


class FuzzMachineBase(RuleBasedStateMachine):
    """The sequence being built; subclasses made by :func:`machine_class` carry the rules and the sink."""

    sink: Sink

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        self.ended = False

    def add(self, step: Step) -> None:
        self.steps.append(step)
        self.ended = self.sink.on_prefix(list(self.steps))

    def teardown(self) -> None:
        self.sink.on_sequence_end(list(self.steps))


def _open(machine: Any) -> bool:
    return not machine.ended


def _closed(machine: Any) -> bool:
    return bool(machine.ended)


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
        namespace[name] = precondition(_open)(rule(step=strategy)(_rule_for(action)))
    namespace["idle"] = precondition(_closed)(rule()(_idle))
    return type("FuzzMachine", (FuzzMachineBase,), namespace)
