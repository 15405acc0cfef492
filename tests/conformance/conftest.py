"""The bundled suite, crossed with the QEMU binaries migconform finds (``QEMU_BINARY``, the set-up
script's versions, PATH): one test per scenario x binary, real QEMU against the model.

Coverage floor (scripts/run-tests sets both): with ``MIGCONFORM_REQUIRE_RESOURCES=1`` a case skipped for a
missing resource (kind ``resource``: no VFIO provider, a personality the provider lacks) fails instead of
skipping; a skip because the host lacks a capability the scenario declares (kind ``host``: kvm, uffd,
uffd-wp) stays a skip. With ``MIGCONFORM_COMPARED_DIR`` every pytest process writes how many cases it
compared there at the end of its session; ``MIGCONFORM_MIN_COMPARED=N`` makes a session without xdist fail
below N itself (under xdist each worker sees only its share: scripts/run-tests adds the files up).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable

import pytest

from contract.scenario import Scenario
from harness import results as results_io
from harness import settings
from harness.binaries import QemuBinary, discover_binaries
from harness.cross_targets import PairPlan, every_ordered_pair, plan_items
from harness.loader import load_scenarios
from harness.results import NOT_MODELLED_SKIP, RESOURCE_SKIP, Results, Skip
from harness.run_pairs import CROSS_SUITE
from harness.runner import RunOptions, needs_vfio, run_sync
from harness.suite import SUITE_DIR
from harness.targets import Target, targets_for_binaries

SUITE = SUITE_DIR


def suite() -> list[Scenario]:
    return load_scenarios([SUITE])


def cross_suite() -> list[Scenario]:
    """The bundled cross-version set (harness/suite/cross), run over every ordered pair of versions found."""
    return load_scenarios([SUITE / CROSS_SUITE])


def cross_cases(targets: list[Target]) -> list[tuple[Scenario, Target]]:
    """Each cross scenario on every ordered pair of the versions found (none with fewer than two); a scenario
    pinning a version this host lacks is one case whose real side skips, naming what is missing."""
    pairs = every_ordered_pair(targets)
    if not pairs:
        return []
    # more: nothing beyond the binaries found (None would word a missing pin as a model profile's)
    plan = PairPlan(pairs=pairs, cross=True, pool=list(targets), more=lambda: [])
    return plan_items(cross_suite(), plan)


def binaries() -> list[QemuBinary]:
    return discover_binaries()


@pytest.fixture
def differential_ready() -> None:
    """Both backends load. An import error of either is a broken installation: it fails the test (it used
    to skip every conformance test, and a suite that checks nothing passed)."""
    from harness.executor import execute
    from harness.runner import default_predict

    assert callable(execute) and callable(default_predict())


REQUIRE_RESOURCES_ENV = settings.REQUIRE_RESOURCES  # "1": a resource-kind skip fails the case
COMPARED_DIR_ENV = settings.COMPARED_DIR  # where each pytest process writes its compared count
MIN_COMPARED_ENV = settings.MIN_COMPARED  # floor checked at session end without xdist
_COMPARED: list[str] = []  # case ids compared in this process


def require_resources() -> bool:
    return settings.require_resources()


def not_compared(skip: Skip) -> None:
    """End a case that was not compared: a skip, or a failure when the floor requires the resource. A bundled
    scenario the model does not model always fails: the bundled suite must be modelled throughout."""
    if skip.kind == NOT_MODELLED_SKIP:
        pytest.fail(f"the model does not model a bundled scenario: {skip.reason}")
    if require_resources() and skip.kind == RESOURCE_SKIP:
        pytest.fail(
            f"not compared for a missing resource ({REQUIRE_RESOURCES_ENV}=1 makes that a failure): {skip.reason}"
        )
    pytest.skip(skip.reason)


def note_compared(case: str) -> None:
    """Count a case whose two sides were compared (agreeing, or a known QEMU bug)."""
    _COMPARED.append(case)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    folder = settings.compared_dir()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{worker}-{os.getpid()}.json").write_text(json.dumps({"compared": len(_COMPARED)}))
    minimum = settings.min_compared()
    if minimum is not None and "PYTEST_XDIST_WORKER" not in os.environ and len(_COMPARED) < minimum:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"coverage floor not met: {len(_COMPARED)} conformance cases compared, fewer than {minimum}"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)


VFIO_PROVIDER_ENV = settings.VFIO_PROVIDER  # e.g. mtty: VFIO scenarios run in that provider
VFIO_OPTIONS_ENV = settings.VFIO_OPTIONS  # e.g. "variant=iovabm", comma-separated KEY=VALUE


@pytest.fixture(scope="session")
def vfio_batch(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Results | None]:
    """The VFIO scenarios' results from ONE provider batch per test session (the lab boots once), or None
    without ``$MIGCONFORM_VFIO_PROVIDER`` (then the executor skips their real side and says why).

    Under pytest-xdist every worker asks for the batch: the first to take the lock runs it and saves the
    results next to the session's temporary folders; the others wait on the lock and load them.
    """
    cache: dict[str, Results] = {}

    def get() -> Results | None:
        name = settings.vfio_provider()
        if name is None:
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
                options = settings.vfio_options()
                scenarios = [s for s in suite() if needs_vfio(s)]
                targets = targets_for_binaries(binaries())
                # The cross-version VFIO cases go into the same batch, as pairs of binaries.
                cross = [(s, t) for s, t in cross_cases(targets) if needs_vfio(s)]
                items = [(s, t) for s in scenarios for t in targets] + cross
                scenarios += list({s.id: s for s, _ in cross}.values())
                run = RunOptions(backend="both", jobs=1, vfio_provider=name, vfio_options=options)
                cache["results"] = run_sync(scenarios, targets, run, items)
                results_io.save(cache["results"], result_file)
        return cache["results"]

    return get


def case_id(scenario: Scenario, target: Target) -> str:
    return f"{scenario.id}[{target.column}]"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_case" not in metafunc.fixturenames:
        return
    targets = targets_for_binaries(binaries())
    cases = [(s, t) for s in suite() for t in targets] + cross_cases(targets)
    if not targets:
        metafunc.parametrize(
            "conformance_case",
            [pytest.param(None, marks=pytest.mark.skip(reason="no QEMU binary found (QEMU_BINARY, setup.sh, PATH)"))],
        )
        return
    metafunc.parametrize("conformance_case", cases, ids=[case_id(s, t) for s, t in cases])
