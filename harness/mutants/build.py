"""Build QEMU from Debian's source of the installed 10.x package, unmodified and once per mutant patch.

Why this shape: a mutant is only worth something if it differs from the binary the harness normally
tests by exactly one patch, so every variant is built from the same source, with the same configure line,
in ONE work tree and ONE build folder. Switching variants restores the files the previous patch touched
(from a pristine copy) and applies the next patch, so ninja recompiles a file or two and ccache answers
the rest; a variant whose source, patch and configure line are unchanged since its last build is not
built at all (its binary and a record of what went into it live in ``<cache>/mutants/bin/<name>/``).

Layout under ``<cache>/mutants`` (cache = env MIGCONFORM_CACHE or ``<repo>/.cache``):
``apt/`` private apt configuration (scripts/setup-mutants.sh), ``src/`` the downloaded tarball,
``wheels/`` meson and pycotap, ``pristine/`` the prepared source, ``work/`` the tree that gets patched,
``build/`` the meson build folder, ``ccache/``, ``bin/<name>/`` the results, ``work-state.json`` the
files a patch has changed in ``work/`` (written before patching, so an interrupted build is repaired),
``logs/`` the configure and ninja output. Commands, the lock and apt are the build kit's (harness.buildkit).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.buildkit import Apt, BuildError, Runner, Store, sha256_file
from harness.qemu_build.spec import CONFIGURE_ARGS, upstream_version
from harness.qemu_build.tree import BINARY_NAME, NICE, ccache_env, check_binary, make_buildable, unpack
from harness.settings import cache_root

REPO_ROOT = Path(__file__).resolve().parents[2]
MUTANTS_DIR = REPO_ROOT / "mutants"
UNMODIFIED = "unmodified"
# Bumped whenever the preparation of the pristine tree changes, so old trees are rebuilt.
PREPARATION_VERSION = "2"


# harness.mutants.run catches the kit's BuildError from here, as it always has.
__all__ = ["BuildError", "BuildRecord", "BuiltBinary", "MutantBuilder", "available_patches", "binary_path"]


@dataclass(frozen=True)
class BuildRecord:
    """What went into a binary, stored next to it as build.json."""

    name: str
    key: str
    source: str
    source_sha256: str
    patch: str | None
    patch_sha256: str | None
    qemu_version: str
    build_seconds: float
    built_at: str


@dataclass(frozen=True)
class BuiltBinary:
    name: str
    binary: Path
    record: BuildRecord
    rebuilt: bool


def mutants_cache() -> Path:
    """The mutants' folder in the set-up script's cache (harness.settings.cache_root)."""
    return cache_root() / "mutants"


def binary_path(name: str, cache: Path | None = None) -> Path:
    return (cache or mutants_cache()) / "bin" / name / BINARY_NAME


def available_patches(mutants_dir: Path = MUTANTS_DIR) -> dict[str, Path]:
    """Mutant name (the patch's file name without .patch) -> patch file, sorted by name."""
    return {p.stem: p for p in sorted(mutants_dir.glob("*.patch"))}


def _log_default(msg: str) -> None:
    print(f"mutants: {msg}", flush=True)


def _runner() -> Runner:
    return Runner(BuildError, hint="run scripts/setup-mutants.sh", tail_lines=25)


def installed_qemu_version() -> str:
    """The Debian version of the installed qemu-system-x86 (the source to fetch is the same version)."""
    version = Apt(_runner()).installed("qemu-system-x86")
    if version is None:
        raise BuildError("qemu-system-x86 is not installed: run scripts/setup.sh first")
    return version


class MutantBuilder:
    """Owns the cache folders above; builds are serialised by a lock file in the cache."""

    def __init__(self, cache: Path | None = None, *, jobs: int = 2, log: Callable[[str], None] = _log_default) -> None:
        self.root = cache or mutants_cache()
        self.jobs = jobs
        self.log = log
        self.apt_conf = self.root / "apt" / "apt.conf"
        self.src_dir = self.root / "src"
        self.wheels_dir = self.root / "wheels"
        self.pristine = self.root / "pristine"
        self.work = self.root / "work"
        self.build_dir = self.root / "build"
        self.ccache_dir = self.root / "ccache"
        self.logs = self.root / "logs"
        self.state_file = self.root / "work-state.json"

    # --- source -----------------------------------------------------------------------------------
    def cached_tarball(self) -> Path | None:
        """The already downloaded orig tarball of the installed QEMU version, if any."""
        pattern = f"qemu_{upstream_version(installed_qemu_version())}*.orig.tar.*"
        found = sorted(self.src_dir.glob(pattern)) if self.src_dir.is_dir() else []
        return found[0] if found else None

    def fetch_source(self) -> Path:
        """Debian's orig tarball of the installed version (the upstream source minus firmware blobs)."""
        debian_version = installed_qemu_version()
        self.src_dir.mkdir(parents=True, exist_ok=True)
        cached = self.cached_tarball()
        if cached is not None:
            return cached
        if not self.apt_conf.is_file():
            raise BuildError(f"no private apt configuration at {self.apt_conf}: run scripts/setup-mutants.sh")
        self.log(f"fetching Debian's source of qemu {debian_version}")
        stale = "is the private deb-src index stale? delete .cache/mutants/apt/lists and rerun scripts/setup-mutants.sh"
        Apt(_runner(), config=self.apt_conf).source_tarball(
            "qemu", debian_version, self.src_dir, what=f"apt-get source ({stale})"
        )
        found = sorted(self.src_dir.glob(f"qemu_{upstream_version(debian_version)}*.orig.tar.*"))
        if not found:
            raise BuildError(f"apt-get source left no qemu_*.orig.tar.* in {self.src_dir}")
        return found[0]

    def prepare_pristine(self, tarball: Path) -> str:
        """Unpack and fix the tarball once; returns the source key (tarball hash + preparation version)."""
        source_key = f"{sha256_file(tarball)}+prep{PREPARATION_VERSION}"
        marker = self.pristine / ".migconform-prepared"
        if marker.is_file() and marker.read_text() == source_key:
            return source_key
        self.log(f"unpacking {tarball.name}")
        if self.pristine.exists():
            shutil.rmtree(self.pristine)
        tmp = self.root / "pristine.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        # The pinned wheels (pythondeps.toml's) in python/wheels, the edk2 blob unpacking off (the +ds tarball
        # has no pc-bios/edk2-*.fd.bz2): harness.qemu_build.tree, shared with `migconform qemu build`.
        top = unpack(tarball, tmp)
        make_buildable(_runner(), top, self.wheels_dir, self.log)
        top.rename(self.pristine)
        shutil.rmtree(tmp)
        marker.write_text(source_key)
        # The work tree and build folder belong to the old source: start them again.
        for stale in (self.work, self.build_dir):
            if stale.exists():
                shutil.rmtree(stale)
        self.state_file.unlink(missing_ok=True)
        return source_key

    # --- work tree --------------------------------------------------------------------------------
    def _dirty_files(self) -> list[str]:
        if not self.state_file.is_file():
            return []
        data = json.loads(self.state_file.read_text())
        return [str(p) for p in data.get("dirty", [])]

    def _write_state(self, dirty: Iterable[str], applied: str | None) -> None:
        self.state_file.write_text(json.dumps({"dirty": sorted(set(dirty)), "applied": applied}))

    def _restore(self) -> None:
        """Put back every file a previous patch touched, leaving unchanged files' timestamps alone."""
        for rel in self._dirty_files():
            orig = self.pristine / rel
            cur = self.work / rel
            if orig.is_file():
                if cur.is_file() and cur.read_bytes() == orig.read_bytes():
                    continue
                tmp = cur.with_name(cur.name + ".migconform-tmp")
                shutil.copyfile(orig, tmp)
                tmp.replace(cur)
            else:
                cur.unlink(missing_ok=True)
        self._write_state([], None)

    def prepare_work(self, patch: Path | None) -> None:
        if not (self.work / "configure").is_file():
            self.log("copying the pristine tree to the work tree")
            if self.work.exists():
                shutil.rmtree(self.work)
            shutil.copytree(self.pristine, self.work, symlinks=True)
            self._write_state([], None)
        self._restore()
        if patch is None:
            return
        touched = patch_files(patch)
        self._write_state(touched, patch.name)
        _runner().run(
            ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-d", str(self.work), "-i", str(patch)],
            what=f"applying {patch.name} (was it made against this QEMU source?)",
        )

    # --- build ------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return ccache_env(self.ccache_dir, self.root)

    def configure(self) -> None:
        key = json.dumps(CONFIGURE_ARGS)
        marker = self.build_dir / ".migconform-configured"
        if marker.is_file() and marker.read_text() == key and (self.build_dir / "build.ninja").is_file():
            return
        if shutil.which("ccache") is None:
            raise BuildError("ccache is not installed: run scripts/setup-mutants.sh")
        if self.build_dir.exists():
            shutil.rmtree(self.build_dir)
        self.build_dir.mkdir(parents=True)
        self.log("configuring (x86_64-softmmu only)")
        argv = [*NICE, str(self.work / "configure"), *CONFIGURE_ARGS]
        _runner().run(argv, cwd=self.build_dir, env=self._env(), what="configure", log=self.logs / "configure.log")
        marker.write_text(key)

    def compile(self, name: str) -> None:
        argv = [*NICE, "ninja", "-C", str(self.build_dir), f"-j{self.jobs}", BINARY_NAME]
        what, log = f"ninja {BINARY_NAME} for {name}", self.logs / f"ninja-{name}.log"
        _runner().run(argv, env=self._env(), what=what, log=log)

    def variant_key(self, source_key: str, patch: Path | None) -> str:
        h = hashlib.sha256()
        h.update(source_key.encode())
        h.update(json.dumps(CONFIGURE_ARGS).encode())
        h.update(patch.read_bytes() if patch is not None else b"<unmodified>")
        return h.hexdigest()

    def stale(self, names: Iterable[str], mutants_dir: Path = MUTANTS_DIR) -> list[str]:
        """The builds among ``names`` that :meth:`build` would (re)build: missing, or made from another
        source or patch. Reads only the cache (no download, no build)."""
        patches = available_patches(mutants_dir)
        tarball = self.cached_tarball()
        marker = self.pristine / ".migconform-prepared"
        source_key = marker.read_text() if marker.is_file() else None
        if tarball is None or source_key != f"{sha256_file(tarball)}+prep{PREPARATION_VERSION}":
            return list(names)
        out = []
        for name in names:
            if name != UNMODIFIED and name not in patches:
                out.append(name)
                continue
            key = self.variant_key(source_key, None if name == UNMODIFIED else patches[name])
            rec_file = binary_path(name, self.root).parent / "build.json"
            try:
                current = json.loads(rec_file.read_text()).get("key") == key and binary_path(name, self.root).is_file()
            except (OSError, ValueError):
                current = False
            if not current:
                out.append(name)
        return out

    def build(
        self, names: Iterable[str] | None = None, *, force: bool = False, mutants_dir: Path = MUTANTS_DIR
    ) -> list[BuiltBinary]:
        """Build the unmodified binary and the named mutants (default: all), skipping up-to-date ones.

        Holds an exclusive lock on the cache for the whole build: the work tree and build folder are
        shared, so a second builder (another pytest worker, a second terminal) waits, then finds its
        binaries up to date.
        """
        with Store(self.root).locked():
            return self._build_locked(names, force=force, mutants_dir=mutants_dir)

    def _build_locked(self, names: Iterable[str] | None, *, force: bool, mutants_dir: Path) -> list[BuiltBinary]:
        patches = available_patches(mutants_dir)
        wanted = [UNMODIFIED, *patches] if names is None else list(names)
        unknown = [n for n in wanted if n != UNMODIFIED and n not in patches]
        if unknown:
            raise BuildError(f"no such mutant: {', '.join(unknown)}; known: {', '.join([UNMODIFIED, *patches])}")
        tarball = self.fetch_source()
        source_key = self.prepare_pristine(tarball)
        results: list[BuiltBinary] = []
        for name in wanted:
            patch = None if name == UNMODIFIED else patches[name]
            key = self.variant_key(source_key, patch)
            out = binary_path(name, self.root)
            rec_file = out.parent / "build.json"
            if not force and out.is_file() and rec_file.is_file():
                rec = BuildRecord(**json.loads(rec_file.read_text()))
                if rec.key == key:
                    results.append(BuiltBinary(name, out, rec, rebuilt=False))
                    continue
            self.log(f"building {name}")
            start = time.monotonic()
            self.prepare_work(patch)
            self.configure()
            self.compile(name)
            seconds = round(time.monotonic() - start, 1)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(BINARY_NAME + ".tmp")
            shutil.copy2(self.build_dir / BINARY_NAME, tmp)
            tmp.replace(out)
            version = check_binary(out)
            rec = BuildRecord(
                name=name,
                key=key,
                source=tarball.name,
                source_sha256=source_key.split("+")[0],
                patch=None if patch is None else patch.name,
                patch_sha256=None if patch is None else sha256_file(patch),
                qemu_version=version,
                build_seconds=seconds,
                built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            rec_file.write_text(json.dumps(asdict(rec), indent=2) + "\n")
            self.log(f"built {name} in {seconds} s -> {out}")
            results.append(BuiltBinary(name, out, rec, rebuilt=True))
        # Leave the work tree unmodified, so a later look at it (or a new patch made from it) starts clean.
        if self.work.exists():
            self._restore()
        return results


def patch_files(patch: Path) -> list[str]:
    """The files a unified diff changes, relative to the tree root (-p1)."""
    files: list[str] = []
    for line in patch.read_text().splitlines():
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].strip()
            if path != "/dev/null":
                files.append(path.split("/", 1)[1])
    if not files:
        raise BuildError(f"{patch}: not a unified diff (no '+++ ' lines)")
    return files
