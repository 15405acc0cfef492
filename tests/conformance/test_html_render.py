"""The HTML report of a real run renders in a real browser (headless chromium): the page is not blank
and its DOM holds every scenario id. Skips, naming the Debian package, when chromium is not installed."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from harness.binaries import discover_binaries
from harness.report import html
from harness.runner import RunOptions, run_sync
from harness.targets import targets_for_binaries
from tests.conformance.conftest import SUITE

pytestmark = pytest.mark.qemu

# The bundled examples: a completed migration, a version-dependent refusal and an explicit step sequence.
EXAMPLES = ("example-precopy-tcp.toml", "example-postcopy-multifd.toml", "example-steps-bg-snapshot.toml")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (Debian package: chromium; apt-get install -y chromium)")


def png_pixels(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, channels and the unfiltered rows of an 8-bit RGB/RGBA PNG (what chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), f"unexpected PNG format depth={depth} colour={colour}"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def test_report_of_a_real_run_renders_in_chromium(differential_ready: None, tmp_path: Path) -> None:
    browser = chromium()
    targets = targets_for_binaries(discover_binaries())
    if not targets:
        pytest.skip("no QEMU binary found (QEMU_BINARY, setup.sh, PATH)")
    from harness.loader import load_scenarios

    scenarios = load_scenarios([SUITE / name for name in EXAMPLES])
    results = run_sync(scenarios, targets, RunOptions(backend="both", jobs=2))
    assert not results.errors and not results.not_run
    page = tmp_path / "report.html"
    page.write_text(html.render(results))
    png = tmp_path / "shot.png"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        shot = subprocess.run(
            [*common, f"--screenshot={png}", "--window-size=1400,900", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert png.exists(), f"chromium wrote no screenshot (status {shot.returncode}): {shot.stderr[-2000:]}"
        dom = subprocess.run(
            [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for scenario in scenarios:
        assert f'id="{scenario.id}"' in dom.stdout, f"{scenario.id} missing from the rendered DOM"
    for target in targets:
        assert target.column in dom.stdout
    width, height, channels, rows = png_pixels(png.read_bytes())
    assert (width, height) == (1400, 900)
    pixels = [row[i : i + 3] for row in rows[::2] for i in range(0, len(row), channels * 2)]
    colours = set(pixels)
    non_white = sum(1 for p in pixels if p != b"\xff\xff\xff")
    assert len(colours) > 10, f"screenshot looks blank ({len(colours)} colours)"
    assert non_white > 1000, "screenshot is almost entirely white"
