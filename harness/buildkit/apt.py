"""Debian packages for the recipes: what apt offers, and the .deb or source files themselves.

Why apt and nothing else: every machine this project runs on reaches Debian's archive through its own apt
configuration, so asking the machine's apt (or a private configuration beside it, ``APT_CONFIG``, when a
recipe needs a source the system lacks) contacts nothing new. Nothing is ever installed: ``apt-get download``
and ``apt-get source --download-only`` fetch files into the cache, and the recipes unpack them there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from harness.buildkit.run import BuildError, Runner

# What changes when apt's view of the archive can have changed: apt-get update replaces files in the lists
# folder (its mtime moves), and a new or edited source changes the others.
_APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def apt_state(*extra: str) -> str:
    """A key for :func:`harness.buildkit.cache.remembered` that changes whenever the machine's apt lists or
    sources do; ``extra`` names what the remembered answer is about (package names, a series)."""
    stamps = [f"{p}:{p.stat().st_mtime_ns if p.exists() else 0}" for p in _APT_STATE]
    return "|".join([*stamps, *extra])


def deb_glob(package: str, version: str) -> str:
    """The file name apt-get download gives ``package=version`` (``:`` in the version becomes ``%3a``), any
    architecture."""
    return f"{package}_{version.replace(':', '%3a')}_*.deb"


class Apt:
    """apt-cache and apt-get through a :class:`Runner`, so a failure raises the recipe's own error.

    ``config``: a private apt configuration file (``APT_CONFIG``); None is the machine's apt.
    """

    def __init__(self, runner: Runner, config: Path | None = None) -> None:
        self.runner = runner
        self.config = config

    def _env(self) -> dict[str, str] | None:
        return None if self.config is None else {**os.environ, "APT_CONFIG": str(self.config)}

    def _query(self, argv: list[str], what: str, cwd: Path | None = None) -> str:
        return self.runner.query(argv, what=what, cwd=cwd, env=self._env())

    def versions(self, packages: Iterable[str]) -> dict[str, list[str]]:
        """Package -> the versions any source offers, newest first (apt-cache madison's order); one call for
        all of them. A package apt does not know maps to []."""
        names = sorted(set(packages))
        out = self._query(["apt-cache", "madison", *names], f"looking up {', '.join(names)}")
        found: dict[str, list[str]] = {name: [] for name in names}
        for line in out.splitlines():
            fields = [f.strip() for f in line.split("|")]
            if len(fields) >= 2 and fields[0] in found and fields[1] and fields[1] not in found[fields[0]]:
                found[fields[0]].append(fields[1])
        return found

    def candidate(self, package: str) -> str:
        """The version ``apt-get install`` would pick (pins and priorities applied)."""
        out = self._query(["apt-cache", "show", "--no-all-versions", package], f"looking up {package}")
        for line in out.splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
        raise self.runner.error(f"apt has no candidate version of {package}")

    def depends(self, spec: str) -> list[str]:
        """The packages ``spec`` (``name=version``) depends on."""
        out = self._query(["apt-cache", "depends", spec], f"resolving {spec}")
        found = []
        for line in out.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "Depends":
                found.append(value.strip())
        return found

    def names(self, prefix: str) -> list[str]:
        """The package names apt knows that start with ``prefix``."""
        return self._query(["apt-cache", "pkgnames", prefix], f"listing {prefix}* packages").split()

    def installed(self, package: str) -> str | None:
        """The installed version of ``package``, or None."""
        try:
            version = self.runner.query(["dpkg-query", "-W", "-f", "${Version}", package], what="dpkg-query")
        except BuildError:
            return None
        return version.strip() or None

    def download(self, package: str, version: str, debs: Path) -> Path:
        """The .deb of ``package=version`` in ``debs``, fetched when missing.

        Downloaded into a temporary folder first, so a killed download never leaves a partial .deb that
        looks whole. apt drops privileges to _apt for downloads; a private folder it cannot enter only costs
        a warning.
        """
        found = sorted(debs.glob(deb_glob(package, version)))
        if found:
            return found[0]
        debs.mkdir(parents=True, exist_ok=True)
        spec = f"{package}={version}"
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            self.runner.run(
                ["apt-get", "download", "-qq", spec], what=f"downloading {spec}", cwd=Path(tmp), env=self._env()
            )
            got = list(Path(tmp).glob("*.deb"))
            if len(got) != 1:
                raise self.runner.error(f"apt-get download {spec} produced {[p.name for p in got]}")
            return got[0].replace(debs / got[0].name)

    def source_tarball(self, package: str, version: str, dest: Path, *, what: str) -> None:
        """Fetches the upstream (orig) tarball of source package ``package=version`` into ``dest``.

        --tar-only: a recipe building from source needs only the upstream tarball, not Debian's packaging
        files (and some mirrors do not keep the .dsc of a backport).
        """
        dest.mkdir(parents=True, exist_ok=True)
        argv = ["apt-get", "source", "--download-only", "--tar-only", f"{package}={version}"]
        self.runner.run(argv, what=what, cwd=dest, env=self._env())
