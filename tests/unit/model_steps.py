"""Step builders shared by the model's unit tests: a raw ``qmp`` step and the (verdict, stage, error) triple a
refusal is compared by, so each test file states only its scenario."""

from __future__ import annotations

from typing import Any

from contract.outcome import Outcome
from contract.scenario import Step


def qmp(command: str, side: str = "source", **arguments: Any) -> Step:
    return Step("qmp", side=side, command=command, arguments=arguments)


def refusal(outcome: Outcome) -> tuple[Any, ...]:
    return outcome.verdict, outcome.stage, outcome.error
