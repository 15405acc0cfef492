"""Content-addressed, locked cache folders: where every recipe keeps what it built.

A recipe's folder under the cache root (``harness.settings.cache_root()``) holds its finished builds as
``<key>/``, the key being an :class:`InputDigest` of everything that shapes the build, so an unchanged input
is a directory lookup and a changed one a new folder. Why a lock and a rename: pytest-xdist workers, a second
terminal and the set-up script may all ask for the same build at once; the flock makes the later ones wait and
then find the entry, and building into a hidden temporary folder that is renamed into place means a build
killed half-way never leaves a folder that looks finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in chunks (kernel packages and source tarballs are tens of megabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class InputDigest:
    """The cache key of a build: named parts hashed as ``name=value`` lines, in the order they are added.

    Name every part, so two inputs cannot shift into each other, and add them in a fixed order: the key
    must come out the same on every machine with the same inputs.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def text(self, name: str, value: str) -> InputDigest:
        self._digest.update(f"{name}={value}\n".encode())
        return self

    def file(self, name: str, path: Path) -> InputDigest:
        """A file by its content (its SHA-256), not its path or time."""
        return self.text(name, sha256_file(path))

    def folder(self, prefix: str, root: Path) -> InputDigest:
        """Every file below ``root``, sorted, each named ``<prefix>:<path relative to root>``."""
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.file(f"{prefix}:{path.relative_to(root)}", path)
        return self

    def key(self, length: int = 16) -> str:
        """The first ``length`` hex digits: 64 bits tell a cache's few dozen builds apart and keep paths short."""
        return self._digest.hexdigest()[:length]


class Store:
    """One recipe's folder in the cache: finished builds ``<root>/<key>/``, one lock, shared downloads beside.

    Hold :meth:`locked` for the whole look-up-or-build (the downloads and shared unpacked trees beside the
    entries are shared too); build with :meth:`publishing`, which makes the entry appear whole or not at all.
    """

    def __init__(self, root: Path, lock_name: str = ".lock") -> None:
        self.root = root
        self.lock_file = root / lock_name

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of this store across processes, released when the block ends (or the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock_file.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def path(self, key: str) -> Path:
        return self.root / key

    def find(self, key: str, marker: str = "manifest.json") -> Path | None:
        """The finished entry ``key`` (it has ``marker``, the file a build writes last), or None."""
        folder = self.path(key)
        return folder if (folder / marker).exists() else None

    @contextmanager
    def publishing(self, key: str) -> Iterator[Path]:
        """A fresh hidden folder to build entry ``key`` in; renamed to ``<root>/<key>`` when the block ends
        without an exception (replacing an unfinished or forced-out entry), deleted when it raises."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
        try:
            yield staging
            staging.chmod(0o755)
            final = self.path(key)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def remembered(path: Path, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s answer, saved in ``path`` and reused while ``key`` stays the same.

    For look-ups that cost seconds and change rarely (apt-cache's answers, until apt's lists change). The
    file is ``{"key": key, **answer}``; an unreadable or outdated one is computed again.
    """
    try:
        saved = json.loads(path.read_text())
        if isinstance(saved, dict) and saved.get("key") == key:
            return {k: v for k, v in saved.items() if k != "key"}
    except (OSError, ValueError):
        pass
    answer = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, **answer}))
    tmp.replace(path)
    return answer
