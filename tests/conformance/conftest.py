"""The bundled suite, crossed with the QEMU binaries migconform finds (``QEMU_BINARY``, the set-up
script's versions, PATH): one test per scenario x binary, real QEMU against the model."""

from __future__ import annotations

import fcntl
import importlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import results as results_io
from harness.binaries import QemuBinary, discover_binaries
from harness.loader import load_scenarios
from harness.results import Results
from harness.runner import RunOptions, Target, needs_vfio, run_sync, targets_for_binaries
from reference_impl.scenario import Scenario

SUITE = Path(__file__).resolve().parent / "scenarios"


def suite() -> list[Scenario]:
    return load_scenarios([SUITE])


def binaries() -> list[QemuBinary]:
    return discover_binaries()


def model_missing() -> str | None:
    """Why the reference model cannot run (then the differential tests skip and say so), or None."""
    try:
        from harness.runner import default_predict

        default_predict()
    except (ImportError, AttributeError) as exc:
        return f"the reference model (reference_impl.predict) is not importable: {exc}"
    return None


def executor_missing() -> str | None:
    try:
        importlib.import_module("harness.executor")
    except ImportError as exc:
        return f"the real-QEMU executor (harness.executor) is not importable: {exc}"
    return None


@pytest.fixture
def differential_ready() -> None:
    """Skip (naming what is missing) when either backend cannot run yet."""
    missing = executor_missing() or model_missing()
    if missing:
        pytest.skip(missing)


VFIO_PROVIDER_ENV = "MIGCONFORM_VFIO_PROVIDER"  # e.g. mtty: VFIO scenarios run in that provider
VFIO_OPTIONS_ENV = "MIGCONFORM_VFIO_OPTIONS"  # e.g. "variant=iovabm", comma-separated KEY=VALUE


@pytest.fixture(scope="session")
def vfio_batch(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Results | None]:
    """The VFIO scenarios' results from ONE provider batch per test session (the lab boots once), or None
    without ``$MIGCONFORM_VFIO_PROVIDER`` (then the executor skips their real side and says why).

    Under pytest-xdist every worker asks for the batch: the first to take the lock runs it and saves the
    results next to the session's temporary folders; the others wait on the lock and load them.
    """
    cache: dict[str, Results] = {}

    def get() -> Results | None:
        name = os.environ.get(VFIO_PROVIDER_ENV)
        if not name:
            return None
        if "results" in cache:
            return cache["results"]
        shared = tmp_path_factory.getbasetemp().parent
        result_file = shared / f"vfio-batch-{name}.json"
        with open(shared / f"vfio-batch-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if result_file.exists():
                cache["results"] = results_io.load(result_file)
            else:
                options = dict(
                    item.split("=", 1) for item in os.environ.get(VFIO_OPTIONS_ENV, "").split(",") if "=" in item
                )
                scenarios = [s for s in suite() if needs_vfio(s)]
                run = RunOptions(backend="both", jobs=1, vfio_provider=name, vfio_options=options)
                cache["results"] = run_sync(scenarios, targets_for_binaries(binaries()), run)
                results_io.save(cache["results"], result_file)
        return cache["results"]

    return get


def case_id(scenario: Scenario, target: Target) -> str:
    return f"{scenario.id}[{target.column}]"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_case" not in metafunc.fixturenames:
        return
    targets = targets_for_binaries(binaries())
    cases = [(s, t) for s in suite() for t in targets]
    if not targets:
        metafunc.parametrize(
            "conformance_case",
            [pytest.param(None, marks=pytest.mark.skip(reason="no QEMU binary found (QEMU_BINARY, setup.sh, PATH)"))],
        )
        return
    metafunc.parametrize("conformance_case", cases, ids=[case_id(s, t) for s, t in cases])
