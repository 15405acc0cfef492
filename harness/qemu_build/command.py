"""``migconform qemu build SPEC``: the command line of the recipe (harness.qemu_build.recipe)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from harness.commands.usage import positive_int
from harness.errors import BuildError
from harness.results import EXIT_ENVIRONMENT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="qemu_command", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="build qemu-system-x86_64 from Debian's source or a local one")
    build.add_argument(
        "spec",
        metavar="SPEC",
        nargs="?",
        help="a QEMU release (10.2, 10.2.2) or Debian version (1:10.2.2+ds-1) of any suite apt can see",
    )
    build.add_argument("--source", type=Path, metavar="DIR|TARBALL", help="build this tree or tarball instead")
    build.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N", help="ninja jobs")


class _Progress:
    """ninja's progress on one rewritten line on a terminal, else a line every 10 %."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = -1
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        elapsed = int(time.monotonic() - self.start)
        text = f"qemu build: compiling {done}/{total} ({percent}%, {elapsed} s)"
        if self.tty:
            sys.stderr.write(f"\r{text}")
            if done == total:
                sys.stderr.write("\n")
        elif percent // 10 != self.shown:
            self.shown = percent // 10
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def cmd_qemu(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    from harness.qemu_build.recipe import QemuRecipe

    if (args.spec is None) == (args.source is None):
        raise UsageError("qemu build: give a SPEC (e.g. 10.2) or --source DIR|TARBALL, not both")

    def log(message: str) -> None:
        sys.stderr.write(f"qemu build: {message}\n")
        sys.stderr.flush()

    recipe = QemuRecipe(jobs=args.jobs, log=log, progress=_Progress())
    try:
        built = recipe.build(args.spec if args.source is None else recipe.local_source(args.source))
    except BuildError as exc:
        sys.stderr.write(f"migconform: build failed: {exc}\n")
        return EXIT_ENVIRONMENT
    state = "cached" if built.cached else f"built in {built.manifest.get('build_seconds')} s"
    print(f"QEMU {built.manifest.get('qemu_version')} ({built.manifest.get('origin')}, {state}): {built.binary}")
    return 0
