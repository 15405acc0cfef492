"""Which QEMU binaries to test, and how each one must be run.

A binary unpacked beside the system one (the set-up script's QEMU 7.2) is not runnable as a bare path:
it needs its own accelerator modules (``QEMU_MODULE_DIR``, else it loads the system QEMU's modules and
dies with "could not load module for type 'tcg-accel-ops'") and its own firmware (``-L``). So a binary is
a path plus the environment and arguments it needs, and everything that launches QEMU goes through
:class:`QemuBinary`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from contract.versions import Version
from harness import settings
from harness.errors import BinaryError, HostEnvironmentError, UsageError
from harness.qemu_build.found import built_qemus, is_built_root
from harness.qemu_build.spec import FIRMWARE_DIRS

QEMU_PROGRAM = "qemu-system-x86_64"
REPO_ROOT = Path(__file__).resolve().parent.parent
VERSION_TIMEOUT_S = 10.0


class BinaryRunError(BinaryError, HostEnvironmentError):
    """A QEMU binary that exists but does not answer ``--version`` (it crashes, exits non-zero, hangs, or prints
    no version): the host cannot test it. A :class:`BinaryError` for callers that check the path, and a
    :class:`HostEnvironmentError` for the run's accounting, so it is never mistaken for QEMU's answer."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        self.what = f"QEMU binary {path}"
        self.detail = problem
        Exception.__init__(self, f"{path}: {problem}")


@dataclass(frozen=True)
class QemuBinary:
    """One QEMU under test.

    ``env`` is added to the environment of every launch; ``extra_args`` go right after the program name.
    ``label`` is how reports name it (the version plus where it came from).
    """

    path: str
    version: Version
    version_text: str
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    label: str = ""

    @property
    def realpath(self) -> str:
        return os.path.realpath(self.path)

    def argv(self, *args: str) -> list[str]:
        """The argv of a launch: program, the binary's own extra arguments, then ``args``."""
        return [self.path, *self.extra_args, *args]

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a launch: ``base`` (default: ours) plus the binary's additions."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        return merged

    def __str__(self) -> str:
        return self.label or f"QEMU {self.version} ({self.path})"


def unpacked_layout(root: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """Environment and ``-L`` arguments for a QEMU unpacked with ``dpkg -x`` into ``root``.

    Only the folders that exist are used, so a root that is a plain prefix install needs nothing.
    """
    env: dict[str, str] = {}
    module_dir = root / "usr/lib/x86_64-linux-gnu/qemu"
    if module_dir.is_dir():
        env["QEMU_MODULE_DIR"] = str(module_dir)
    args: list[str] = []
    for firmware in ("usr/share/qemu", "usr/share/seabios"):
        if (root / firmware).is_dir():
            args += ["-L", str(root / firmware)]
    return env, tuple(args)


def built_layout(root: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """``-L`` arguments for a QEMU ``migconform qemu build`` made: Debian's firmware folders the tree lacks.

    Why: a built tree holds only the binary (Debian's +ds source has no firmware blobs), and a QEMU whose data
    folders hold no SeaBIOS dies with "could not load PC BIOS 'bios-256k.bin'". The recipe compiles these
    folders in as its firmware path too; passing them keeps a binary working whose compiled-in path differs
    (a --source tree configured by hand).
    """
    args: list[str] = []
    for firmware in FIRMWARE_DIRS:
        if not (root / firmware.lstrip("/")).is_dir() and Path(firmware).is_dir():
            args += ["-L", firmware]
    return {}, tuple(args)


def _layout_for(path: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """A binary at ``<root>/usr/bin/qemu-system-x86_64`` outside the system prefix is an unpacked one, or a
    built one when ``root`` holds a build manifest."""
    resolved = path.resolve()
    if resolved.parent.name == "bin" and resolved.parent.parent.name == "usr":
        root = resolved.parent.parent.parent
        if is_built_root(root):
            return built_layout(root)
        if root != Path("/"):
            return unpacked_layout(root)
    return {}, ()


@cache
def _version_of(path: str, env_items: tuple[tuple[str, str], ...]) -> str:
    env = dict(os.environ)
    env.update(dict(env_items))
    try:
        result = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise BinaryError(path, "no such file") from None
    except PermissionError:
        raise BinaryError(path, "not executable") from None
    except subprocess.TimeoutExpired:
        raise BinaryRunError(path, f"--version did not answer within {VERSION_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise BinaryRunError(path, f"cannot run: {exc.strerror or exc}") from None
    first = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    if result.returncode != 0 or "version" not in first.lower():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BinaryRunError(path, f"--version failed (status {result.returncode}): {detail[-1] if detail else ''}")
    return first


def load_binary(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    extra_args: Iterable[str] | None = None,
    origin: str = "",
) -> QemuBinary:
    """A :class:`QemuBinary` for ``path``, its version read from ``--version``.

    When ``env``/``extra_args`` are not given and the binary sits in an unpacked tree
    (``<root>/usr/bin/``), that tree's modules and firmware are used.
    """
    p = Path(path)
    if not p.exists():
        found = shutil.which(str(path))
        if found is None:
            raise BinaryError(str(path), "no such file (and not found on PATH)")
        p = Path(found)
    if p.is_dir():
        raise BinaryError(str(p), "is a folder, not a QEMU binary")
    auto_env, auto_args = _layout_for(p)
    use_env = dict(auto_env if env is None else env)
    use_args = tuple(auto_args if extra_args is None else extra_args)
    text = _version_of(str(p), tuple(sorted(use_env.items())))
    try:
        version = Version.parse(text)
    except ValueError:
        raise BinaryRunError(str(p), f"cannot read a version from {text!r}") from None
    where = f", {origin}" if origin else ""
    return QemuBinary(
        path=str(p),
        version=version,
        version_text=text,
        env=use_env,
        extra_args=use_args,
        label=f"QEMU {version} ({p}{where})",
    )


def _candidates() -> list[tuple[str, str]]:
    """(path, origin) in discovery order: $QEMU_BINARY, the set-up script's versions, the QEMUs
    ``migconform qemu build`` made (oldest first), then PATH."""
    out: list[tuple[str, str]] = []
    out.extend((item, settings.QEMU_BINARY) for item in settings.qemu_binaries())
    qemu_cache = settings.cache_root() / "qemu"
    if qemu_cache.is_dir():
        for version_dir in sorted(qemu_cache.iterdir()):
            candidate = version_dir / "usr/bin" / QEMU_PROGRAM
            if candidate.is_file() and os.access(candidate, os.X_OK):
                out.append((str(candidate), "set-up script"))
    out.extend((path, origin) for path, origin, _ in built_qemus())
    on_path = shutil.which(QEMU_PROGRAM)
    if on_path:
        out.append((on_path, "PATH"))
    return out


def discover_binaries(*, strict: bool = False) -> list[QemuBinary]:
    """The QEMU binaries migconform tests by default, deduplicated by real path, in discovery order.

    A candidate path that is not a usable file is skipped, unless ``strict`` (then its :class:`BinaryError`
    is raised) or it was named explicitly in ``$QEMU_BINARY`` (a user's explicit choice must not vanish
    silently). A candidate that exists but fails ``--version`` (:class:`BinaryRunError`) is always raised:
    dropping it would shrink the run without anyone noticing.
    """
    seen: set[str] = set()
    found: list[QemuBinary] = []
    for path, origin in _candidates():
        real = os.path.realpath(path)
        if real in seen:
            continue
        try:
            binary = load_binary(path, origin=origin)
        except BinaryError as exc:
            if strict or origin == "QEMU_BINARY" or isinstance(exc, HostEnvironmentError):
                raise
            continue
        seen.add(real)
        found.append(binary)
    return found


def is_version_request(text: str) -> bool:
    """``--qemu 10.2`` or ``--qemu 10.2.2`` names a version, unless a file of that name exists."""
    parts = text.split(".")
    return 2 <= len(parts) <= 3 and all(p.isdigit() for p in parts) and not Path(text).exists()


def select_version(text: str, found: Iterable[QemuBinary]) -> QemuBinary:
    """The first binary (discovery order) whose version is ``text`` or starts with ``text.``; a
    :class:`UsageError` naming the versions found when none is."""
    binaries = list(found)
    for binary in binaries:
        version = str(binary.version)
        if version == text or version.startswith(text + "."):
            return binary
    have = ", ".join(str(b.version) for b in binaries) or "none"
    raise UsageError(
        f"--qemu {text}: no QEMU {text} found (versions found: {have}); "
        f"`migconform qemu build {text}` builds one from Debian's source"
    )
