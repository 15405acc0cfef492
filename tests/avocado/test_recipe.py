"""The avocado entry point: its recipe, and one real ``avocado run`` over two scenarios."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.avocado_tests import REPO, SKIP_STATUS, SUITE, recipe

AVOCADO = Path(sys.executable).parent / "avocado"
ENTRY = REPO / "tests" / "avocado" / "conformance"


def test_recipe_has_one_exec_test_per_scenario() -> None:
    runnables = recipe([SUITE], only=["bgsnap-tcp", "vfio-postcopy-migratable"], run_args=["--timeout=20"])
    assert [r["identifier"] for r in runnables] == ["migconform:bgsnap-tcp", "migconform:vfio-postcopy-migratable"]
    first = runnables[0]
    assert first["kind"] == "exec-test"
    assert first["args"] == ["-m", "harness.avocado_tests", "one", str(SUITE / "bgsnap-tcp.toml"), "--timeout=20"]
    assert first["config"] == {"runner.exectest.exitcodes.skip": [SKIP_STATUS]}
    with pytest.raises(ValueError, match="no scenario nope"):
        recipe([SUITE], only=["nope"])


def test_entry_script_prints_the_recipe() -> None:
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("tests/avocado/conformance runs the repository's .venv/bin/python (scripts/setup.sh makes it)")
    out = subprocess.run([str(ENTRY), "--scenario", "bgsnap-tcp"], capture_output=True, text=True, check=True)
    assert [r["identifier"] for r in json.loads(out.stdout)] == ["migconform:bgsnap-tcp"]


@pytest.mark.qemu
def test_avocado_runs_scenarios(tmp_path: Path) -> None:
    if not AVOCADO.exists() and shutil.which("avocado") is None:
        pytest.skip("avocado is not installed (pip install avocado-framework, the 'avocado' extra)")
    avocado = str(AVOCADO) if AVOCADO.exists() else "avocado"
    proc = subprocess.run(
        [
            avocado, "run", "--job-results-dir", str(tmp_path), "--resolver-run-executables", str(ENTRY),
            "--resolver-exec-arguments", "--scenario bgsnap-tcp --scenario vfio-postcopy-migratable",
        ],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=600,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert "migconform:bgsnap-tcp:  PASS" in text, text
    assert "migconform:vfio-postcopy-migratable:  SKIP" in text, text
    assert "PASS 1 | ERROR 0 | FAIL 0 | SKIP 1" in text, text
