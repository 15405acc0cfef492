"""Kernel helpers shared by the recipes that boot a Debian kernel (the guest image, the VFIO lab)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# bzImage payload compressions: magic -> command that decompresses stdin to stdout. Debian's 6.1 kernels use
# LZ4, its 6.12 kernels zstd.
_PAYLOADS: tuple[tuple[bytes, tuple[str, ...]], ...] = (
    (b"\x02\x21\x4c\x18", ("lz4", "-dc")),
    (b"\x28\xb5\x2f\xfd", ("zstd", "-dcq")),
    (b"\xfd7zXZ\x00", ("xz", "-dcq")),
    (b"\x1f\x8b\x08\x00", ("gzip", "-dcq")),
)


def extract_vmlinux(bzimage: Path, out: Path) -> bool:
    """Writes the ELF vmlinux inside ``bzimage`` to ``out``; False when no payload decompresses to one (or its
    decompressor is not installed).

    Why: QEMU boots that ELF through its PVH entry (the kernel needs CONFIG_PVH=y), which skips SeaBIOS's
    linuxboot, the real-mode set-up and the in-guest decompressor: 0.5 to 1 s less per boot under TCG.
    The caller falls back to booting the bzImage, which always works, only slower.
    """
    data = bzimage.read_bytes()
    for magic, command in _PAYLOADS:
        if shutil.which(command[0]) is None:
            continue
        at = data.find(magic)
        while at >= 0:
            # Trailing bytes after the payload make some decompressors complain; the output is complete anyway.
            done = subprocess.run(list(command), input=data[at:], capture_output=True, check=False)
            if done.stdout[:4] == b"\x7fELF":
                out.write_bytes(done.stdout)
                return True
            at = data.find(magic, at + 1)
    return False
