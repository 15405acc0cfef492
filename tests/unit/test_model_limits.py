"""The model says "not modelled" for what it does not model (reference_impl.limits), never a guessed verdict.

Before: a raw QMP command without a handler answered ``{}``, so the model predicted ``completed`` for a command
real QEMU refuses, and the user saw a divergence that was the model's gap, not QEMU's.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import Scenario, Step, VmSpec
from harness.report import build_matrix, summary_line
from harness.report import junit as junit_report
from harness.results import NOT_MODELLED_SKIP, Results, Skip, skip_kind
from reference_impl import predict

HOST = HostFacts()


def run(*steps: Step, version: str = "10.0") -> Outcome:
    return predict(Scenario("t", source=VmSpec(), destination=VmSpec(), steps=steps), version, HOST)


def qmp(command: str, **arguments: Any) -> Step:
    return Step("qmp", side="source", command=command, arguments=arguments)


@pytest.mark.parametrize(
    ("step", "what"),
    [
        (qmp("x-colo-lost-heartbeat"), "QMP command 'x-colo-lost-heartbeat'"),
        (qmp("announce-self"), "QMP command 'announce-self'"),
        (qmp("migrate", uri="rdma:127.0.0.1:4444"), "migrate URI scheme 'rdma'"),
        (qmp("migrate", uri="fd:3"), "fd: URI with the descriptor number 3"),
        (qmp("migrate", uri="vsock:3:4444"), "migrate URI scheme 'vsock'"),
        (
            Step("qmp", side="destination", command="migrate-incoming", arguments={"uri": "vsock:3:4444"}),
            "migrate-incoming URI scheme 'vsock'",
        ),
        (qmp("object-add", **{"qom-type": "tls-creds-anon", "id": "t0"}), "object-add of qom-type 'tls-creds-anon'"),
        (qmp("query-status", bogus=1), "QMP command 'query-status'"),
    ],
)
def test_unmodelled_step_gives_not_modelled_not_a_verdict(step: Step, what: str) -> None:
    for version in ("7.2", "10.0"):
        outcome = run(step, version=version)
        assert outcome.verdict == "skipped"
        assert outcome.not_modelled == what
        assert outcome.skip_reason == f"not modelled: {what}"
        assert outcome.error is None and outcome.source is None and outcome.destination is None


def test_modelled_commands_still_predict() -> None:
    assert run(qmp("query-status")).verdict == "completed"
    backend = {"qom-type": "memory-backend-ram", "id": "m0", "size": 1 << 20}
    assert run(qmp("object-add", **backend)).not_modelled is None
    refused = run(qmp("migrate", uri="bogus:x"))
    assert (refused.verdict, refused.error) == ("refused", "unknown migration protocol: bogus:x")


def test_not_modelled_is_counted_apart_in_every_report() -> None:
    outcome = run(qmp("announce-self"))
    assert skip_kind(outcome) == NOT_MODELLED_SKIP
    qemu = Outcome("t", "qemu", "10.0", "refused", stage="qmp", error="some QEMU error")
    results = Results(
        outcomes=[outcome, qemu],
        skips=[Skip("t", "10.0", f"reference: {outcome.skip_reason}", NOT_MODELLED_SKIP)],
    )
    matrix = build_matrix(results)
    cell = matrix.cell("t", "10.0")
    assert cell is not None and cell.kind == "not-modelled" and cell.detail == "QMP command 'announce-self'"
    assert "1 not modelled" in summary_line(matrix)
    assert matrix.counts()["agree"] == 0 and matrix.counts()["diverge"] == 0 and matrix.counts()["skip"] == 0
    xml = junit_report.render(results)
    assert 'type="not-modelled"' in xml and "not modelled: QMP command 'announce-self'" in xml
    assert 'skipped="1"' in xml and 'failures="0"' in xml
