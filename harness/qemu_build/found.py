"""The QEMUs `migconform qemu build` made, for discovery (harness.binaries) and `migconform qemus`.

Standard library and settings only: harness.binaries imports this on every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.settings import cache_root

STORE_NAME = "qemu-builds"
# The file a build writes last into its entry (the Store's marker), and what tells harness.binaries that a
# ``<root>/usr/bin/qemu-system-x86_64`` is a built QEMU (firmware from Debian's folders) rather than an
# unpacked Debian package (firmware in the tree).
MANIFEST = "qemu-build.json"
BINARY_REL = "usr/bin/qemu-system-x86_64"


def store_root() -> Path:
    return cache_root() / STORE_NAME


def built_qemus(root: Path | None = None) -> list[tuple[str, str, dict[str, object]]]:
    """(binary path, origin, manifest) of every finished build, oldest first; origin is the manifest's
    ("built from Debian source 10.2.2+ds-1", "built from /path")."""
    root = root or store_root()
    out: list[tuple[float, str, str, dict[str, object]]] = []
    if not root.is_dir():
        return []
    for manifest in root.glob(f"*/{MANIFEST}"):
        binary = manifest.parent / BINARY_REL
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and binary.is_file() and os.access(binary, os.X_OK):
            out.append((manifest.stat().st_mtime, str(binary), str(data.get("origin", "built")), data))
    return [(path, origin, data) for _, path, origin, data in sorted(out)]


def is_built_root(root: Path) -> bool:
    return (root / MANIFEST).is_file()
