"""Every environment variable migconform reads, in one place, each with one typed accessor.

Why one module: the variables used to be read in a dozen places, and the cache folder's rule was copied four
times; a change to one copy silently split the cache. Every accessor reads ``os.environ`` when it is called,
never at import, so a test's ``monkeypatch.setenv`` takes effect. ``reference_impl`` never reads the
environment (the model's answer depends on the scenario and the QEMU version alone); everything else asks
here, which ``tests/unit/test_settings.py`` checks by scanning the source. The table of every variable, its
default and what it is for is docs/settings.md; the same test keeps that table and ``VARIABLES`` in step.

Standard library only: ``python3 -m harness.guest.image`` (scripts/setup-guest.sh) imports this before the
project's virtual environment exists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- the names ---------------------------------------------------------------------------------------------
# The harness and the CLI.
QEMU_BINARY = "QEMU_BINARY"
CACHE = "MIGCONFORM_CACHE"
SUITE = "MIGCONFORM_SUITE"
VFIO_DEVICES = "MIGCONFORM_VFIO_DEVICES"
# The VFIO lab's diagnostics and accelerator (harness/vfio_lab/boot.py).
LAB_ACCEL = "MIGCONFORM_LAB_ACCEL"
LAB_VERBOSE = "MIGCONFORM_LAB_VERBOSE"
LAB_PYOPTS = "MIGCONFORM_LAB_PYOPTS"
# The pytest suites (tests/); scripts/run-tests sets the coverage floor's.
VFIO_PROVIDER = "MIGCONFORM_VFIO_PROVIDER"
VFIO_OPTIONS = "MIGCONFORM_VFIO_OPTIONS"
REQUIRE_RESOURCES = "MIGCONFORM_REQUIRE_RESOURCES"
COMPARED_DIR = "MIGCONFORM_COMPARED_DIR"
MIN_COMPARED = "MIGCONFORM_MIN_COMPARED"
MUTANTS = "MIGCONFORM_MUTANTS"
CI_LAB_TEST = "MIGCONFORM_CI_LAB_TEST"
VFIO_ALLOW_REBIND = "MIGCONFORM_VFIO_ALLOW_REBIND"
VFIO_DIRTY_REPORT = "MIGCONFORM_VFIO_DIRTY_REPORT"
BISECT = "MIGCONFORM_BISECT"

VARIABLES: tuple[str, ...] = (
    QEMU_BINARY, CACHE, SUITE, VFIO_DEVICES, LAB_ACCEL, LAB_VERBOSE, LAB_PYOPTS, VFIO_PROVIDER, VFIO_OPTIONS,
    REQUIRE_RESOURCES, COMPARED_DIR, MIN_COMPARED, MUTANTS, CI_LAB_TEST, VFIO_ALLOW_REBIND, VFIO_DIRTY_REPORT, BISECT,
)


def _value(name: str) -> str | None:
    """The variable's text, or None when it is unset or empty (``${VAR:-default}`` in the shell scripts)."""
    return os.environ.get(name) or None


# --- the harness -------------------------------------------------------------------------------------------

# The cache folder inside the repository when $MIGCONFORM_CACHE is not set (scripts/setup.sh, .gitignore).
DEFAULT_CACHE_DIRNAME = ".cache"


def cache_root() -> Path:
    """The set-up script's cache folder: ``$MIGCONFORM_CACHE``, else ``<repo>/.cache``, the rule of
    scripts/setup.sh, so the harness finds what the script unpacked and built (QEMU versions, the guest image,
    the lab, the mutants, probe records)."""
    value = _value(CACHE)
    return Path(value) if value else REPO_ROOT / DEFAULT_CACHE_DIRNAME


def qemu_binaries() -> list[str]:
    """``$QEMU_BINARY``: the binaries a user named, ``os.pathsep``-separated, blanks dropped; tested first."""
    return [item.strip() for item in (_value(QEMU_BINARY) or "").split(os.pathsep) if item.strip()]


def suite_override() -> Path | None:
    """``$MIGCONFORM_SUITE``: the folder ``migconform conformance`` runs instead of the bundled suite."""
    value = _value(SUITE)
    return Path(value) if value else None


def vfio_devices() -> list[str]:
    """``$MIGCONFORM_VFIO_DEVICES``: host VFIO devices (comma- or blank-separated), added to --vfio-device."""
    return [name for name in re.split(r"[,\s]+", _value(VFIO_DEVICES) or "") if name]


def lab_accel() -> Literal["kvm", "tcg"] | None:
    """``$MIGCONFORM_LAB_ACCEL``: ``kvm`` or ``tcg`` forces the lab's accelerator over the probes' choice;
    any other value is ignored, so the probes decide."""
    value = _value(LAB_ACCEL)
    if value == "kvm":
        return "kvm"
    if value == "tcg":
        return "tcg"
    return None


def lab_verbose() -> bool:
    """``$MIGCONFORM_LAB_VERBOSE``: any non-empty value boots the lab kernel with ``initcall_debug``."""
    return _value(LAB_VERBOSE) is not None


def lab_pyopts() -> str | None:
    """``$MIGCONFORM_LAB_PYOPTS``: interpreter options for the Python runner inside the lab."""
    return _value(LAB_PYOPTS)


# --- the pytest suites -------------------------------------------------------------------------------------

def vfio_provider() -> str | None:
    """``$MIGCONFORM_VFIO_PROVIDER``: the provider tests/conformance runs VFIO scenarios in (e.g. ``mtty``);
    unset or empty: their real side is skipped."""
    return _value(VFIO_PROVIDER)


def vfio_options() -> dict[str, str]:
    """``$MIGCONFORM_VFIO_OPTIONS``: ``KEY=VALUE,...`` options for that provider; items without ``=`` are
    ignored."""
    items = (_value(VFIO_OPTIONS) or "").split(",")
    return dict(item.split("=", 1) for item in items if "=" in item)


def require_resources() -> bool:
    """``$MIGCONFORM_REQUIRE_RESOURCES``: set and not ``0``, a conformance case skipped for a missing resource
    fails (the coverage floor, docs/scenario-format.md)."""
    return _value(REQUIRE_RESOURCES) not in (None, "0")


def compared_dir() -> Path | None:
    """``$MIGCONFORM_COMPARED_DIR``: where each pytest process writes how many conformance cases it compared."""
    value = _value(COMPARED_DIR)
    return Path(value) if value else None


def min_compared() -> int | None:
    """``$MIGCONFORM_MIN_COMPARED``: the floor a pytest session without xdist checks itself; a value that is
    not an integer raises ``ValueError`` (a misconfigured floor must not pass silently)."""
    value = _value(MIN_COMPARED)
    return int(value) if value else None


def mutants_build() -> bool:
    """``$MIGCONFORM_MUTANTS=1``: tests/mutants builds missing or stale mutant QEMUs instead of skipping."""
    return _value(MUTANTS) == "1"


def ci_lab_test() -> bool:
    """``$MIGCONFORM_CI_LAB_TEST=1``: tests/hw/test_ci_lab.py runs the CI plan's VFIO cells in the lab (8 nested
    boots, ~6 min); off by default, the plan itself is tested without the lab."""
    return _value(CI_LAB_TEST) == "1"


def bisect_end_to_end() -> bool:
    """``$MIGCONFORM_BISECT=1``: tests/mutants/test_bisect_e2e.py bisects a QEMU history, building QEMU at
    each step (several builds of minutes each)."""
    return _value(BISECT) == "1"


def vfio_allow_rebind() -> bool:
    """``$MIGCONFORM_VFIO_ALLOW_REBIND=1``: tests/hw may bind the configured devices to vfio-pci."""
    return _value(VFIO_ALLOW_REBIND) == "1"


def vfio_dirty_report() -> bool | None:
    """``$MIGCONFORM_VFIO_DIRTY_REPORT``: ``works`` or anything else (fails) overrides what tests/hw infers from
    the kernel about VFIO dirty-page reporting; unset: inferred."""
    value = os.environ.get(VFIO_DIRTY_REPORT)
    return None if value is None else value == "works"
