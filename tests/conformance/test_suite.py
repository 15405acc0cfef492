"""Every bundled scenario on every discovered QEMU: real QEMU and the model must agree.

Runs through the same runner as ``migconform run`` (one item per test, so ``pytest -n 2`` spreads the
suite over workers). A divergence fails with both sides' values; a skip names its reason.
"""

from __future__ import annotations

import pytest

from harness.report import console
from harness.runner import RunOptions, Target, run_sync
from reference_impl.scenario import Scenario

pytestmark = pytest.mark.qemu


@pytest.mark.usefixtures("differential_ready")
def test_conformance(conformance_case: tuple[Scenario, Target]) -> None:
    scenario, target = conformance_case
    results = run_sync([scenario], [target], RunOptions(backend="both", jobs=1, timeout=60.0))
    report = console.render(results)
    assert not results.errors, f"harness error:\n{report}"
    if results.skips:
        pytest.skip(results.skips[0].reason)
    assert len(results.comparisons) == 1, report
    assert results.comparisons[0].agree, f"real QEMU and the model diverge:\n{report}"
