"""``migconform ci run-local`` with VFIO cells: 2 QEMUs x the lab's 2 kernels x 2 shards over one VFIO
scenario and one plain one, each lab job booting its own nested guest (one at a time: two L1 guests under
TCG on a loaded 2-core host miss the lab's own bounds), merged with ``--plan``, gives the verdicts of one
unsharded run per kernel (tests/qemu/test_ci_local.py: the same without the lab)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import settings
from harness.vfio_lab.build import LabImage
from tests.qemu.test_ci_local import KERNELS, run_matrix, versions  # noqa: F401 - versions: the fixture

SUBSET = ("caps-x-colo-alone", "vfio-postcopy-migratable")


# Eight nested lab boots one after another: ~6 min on the 2-core development host, which is a quarter of the
# CI's test time for what tests/qemu/test_ci_local.py already proves without the lab (the plan, the shards,
# the merge); this test adds only that the kernel reaches the lab job. Opt-in, run before a release.
LAB_MATRIX = settings.ci_lab_test()


@pytest.mark.skipif(not LAB_MATRIX, reason="opt-in (MIGCONFORM_CI_LAB_TEST=1): 8 nested lab boots, ~6 min")
@pytest.mark.usefixtures("versions")
def test_run_local_vfio_cells_match_an_unsharded_run(lab_image: LabImage, tmp_path: Path) -> None:
    plan, _, work = run_matrix(tmp_path, SUBSET, KERNELS, 2, together=1)  # one nested guest at a time
    lab_cells = [c for c in plan.cells if c.kernel in KERNELS]
    assert len(lab_cells) == len(plan.cells) == 8
    text = (work / "ci-results" / "merged.json").read_text()
    assert "kernel 6.1" in text and "kernel 6.12" in text and lab_image.series
