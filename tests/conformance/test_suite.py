"""Every bundled scenario on every discovered QEMU: real QEMU and the model must agree.

Runs through the same runner as ``migconform run`` (one item per test, so ``pytest -n 2`` spreads the
suite over workers). A divergence fails with both sides' values; a skip names its reason. A divergence
listed in harness/known_bugs.py (a documented QEMU bug) must still be there and match the bug's signature
(versions, accelerator, the values real QEMU produced); it is then an expected failure. A known bug that no
longer reproduces fails the test, so that its entry is removed (``migconform run`` only reports it).

The cross-version set (harness/suite/cross) runs the same way over every ordered pair of the versions found.

VFIO scenarios need a device: with ``MIGCONFORM_VFIO_PROVIDER=mtty`` they run in the mtty lab (one batch
per worker), otherwise their real side is skipped with the executor's reason.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from contract.scenario import Scenario
from harness.known_bugs import known_divergence
from harness.report import console
from harness.results import Results
from harness.runner import RunOptions, needs_vfio, run_sync
from harness.targets import Target
from tests.conformance.conftest import case_id, not_compared, note_compared

pytestmark = pytest.mark.qemu


@pytest.mark.usefixtures("differential_ready")
def test_conformance(conformance_case: tuple[Scenario, Target], vfio_batch: Callable[[], Results | None]) -> None:
    scenario, target = conformance_case
    batch = vfio_batch() if needs_vfio(scenario) else None
    if batch is not None:
        results = batch.select(scenario.id, target.column)
    else:
        # items: a cross-version case runs its pair (each side on its own binary), a plain one as ever
        options = RunOptions(backend="both", jobs=1, timeout=60.0)
        results = run_sync([scenario], [target], options, items=[(scenario, target)])
    report = console.render(results)
    assert not results.errors, f"harness error:\n{report}"
    if results.skips:
        not_compared(results.skips[0])
    assert len(results.comparisons) == 1, report
    note_compared(case_id(scenario, target))
    accel = next((o.accel for o in results.outcomes if o.backend == "qemu"), None)
    known = known_divergence(scenario, target.version, accel)
    if known is not None:
        # An agreeing case fails here with "known bug no longer reproduces" so that the entry gets removed;
        # a divergence that does not match the bug's signature fails with what does not match.
        problems = known.problems(results.comparisons[0])
        assert not problems, "\n".join(problems) + f"\n{report}"
        if not results.comparisons[0].agree:  # an intermittent bug that did not show this run passes
            pytest.xfail(f"known QEMU bug: {known.reason}")
    assert results.comparisons[0].agree, f"real QEMU and the model diverge:\n{report}"
