"""The guest memory check's reading of the workload's answer (pure logic: a stand-in console replays output).

A check that examined nothing must be an error, never "alive, 0 bad pages": the real-guest counterpart is
tests/guest/test_guest_scenarios.py::test_a_check_that_examined_nothing_is_a_harness_error."""

from __future__ import annotations

import pytest

from harness.errors import GuestCheckError
from harness.guest.console import ConsoleError
from harness.guest.session import verify_blocking


class ReplayConsole:
    """Answers ``memload verify`` with a fixed output (or fails like a dead console)."""

    def __init__(self, output: str, status: int = 0, dead: bool = False) -> None:
        self.output = output
        self.status = status
        self.dead = dead

    def wait_for_prompt(self, timeout: float) -> None:
        if self.dead:
            raise ConsoleError("console closed (QEMU gone?) while waiting for the prompt")

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        assert command == "memload verify"
        return self.status, self.output


GOOD = "pages_checked=4096 bad_pages=1 first_bad=17 torn=1 stale=0 future=0 generation=9"


def test_a_parsed_answer_is_a_report() -> None:
    report = verify_blocking(ReplayConsole(GOOD))  # type: ignore[arg-type]
    assert (report.alive, report.pages_checked, report.bad_pages, report.first_bad) == (True, 4096, 1, 17)


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("sh: memload: not found", "no result line"),
        ("", "no result line"),
        ("pages_checked=4096 bad_pages=", "no result line"),  # cut short
        ("pages_checked=0 bad_pages=0 first_bad=none torn=0 stale=0 future=0 generation=0", "checked no page"),
    ],
)
def test_an_answer_that_checked_nothing_is_an_error(output: str, words: str) -> None:
    with pytest.raises(GuestCheckError) as info:
        verify_blocking(ReplayConsole(output, status=127), side="destination")  # type: ignore[arg-type]
    assert words in str(info.value) and info.value.output == output


def test_a_guest_that_does_not_answer_is_reported_not_raised() -> None:
    """A dead guest may well be QEMU's doing: it stays an outcome (alive False) for the comparison."""
    report = verify_blocking(ReplayConsole("", dead=True))  # type: ignore[arg-type]
    assert not report.alive and "console closed" in report.detail
