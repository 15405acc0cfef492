"""`migconform qemu build`: qemu-system-x86_64 from Debian's source of any suite apt can see, or a local
tree or tarball, built once per source and configure line and kept in the build kit's Store.

Layout under ``<cache>/qemu-builds`` (cache = harness.settings.cache_root()): ``apt/`` the private apt
configuration (scripts/setup-qemu-build.sh), ``src/`` the downloaded orig tarballs, ``wheels/`` meson and
pycotap, ``ccache/`` shared by every build, ``logs/<key>.log`` each build's output (kept when it fails),
``<key>/`` a finished build: ``usr/bin/qemu-system-x86_64``, ``build.log`` and ``qemu-build.json`` (the
manifest, written last). The source and build folders live in the entry's staging folder while it builds and
are dropped once the binary is published: ccache makes a rebuild cheap, and an entry is ~50 MB, not 1 GB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.buildkit import Apt, BuildError, InputDigest, Runner, Store, remembered, sha256_file
from harness.qemu_build.found import BINARY_REL, MANIFEST, store_root
from harness.qemu_build.spec import (
    RECIPE_VERSION,
    SourceOffer,
    cache_key,
    choose,
    configure_args,
    parse_madison,
    parse_spec,
    ranked,
)
from harness.qemu_build.tree import BINARY_NAME, NICE, ccache_env, check_binary, make_buildable, unpack

SETUP_HINT = "run scripts/setup-qemu-build.sh"
# Never copied from a local tree: version control and earlier build folders are not the source.
_IGNORED = shutil.ignore_patterns(".git", "build", "_build")


class QemuBuildError(BuildError):
    """A step of `migconform qemu build` failed (a harness.errors.BuildError, like every recipe's)."""


class MissingFromMirror(QemuBuildError):
    """apt's index lists a version whose source files the mirror answers 404 for."""


@dataclass(frozen=True)
class Source:
    """What a build starts from: a tarball or a tree, its content digest, and how reports name it."""

    origin: str
    digest: str
    tarball: Path | None = None
    tree: Path | None = None
    debian_version: str | None = None
    suite: str | None = None


@dataclass(frozen=True)
class BuiltQemu:
    binary: Path
    manifest: dict[str, object]
    cached: bool


def _runner() -> Runner:
    return Runner(QemuBuildError, hint=SETUP_HINT, tail_lines=25)


class QemuRecipe:
    """Builds into the Store at ``root`` (default ``<cache>/qemu-builds``), holding its lock throughout."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        jobs: int = 2,
        log: Callable[[str], None] = print,
        progress: Callable[[int, int], None] | None = None,
        ccache_dir: Path | None = None,
        wheels_dir: Path | None = None,
    ) -> None:
        """``ccache_dir`` and ``wheels_dir`` (default: in ``root``) let another Store share this one's compiler
        cache and wheels (harness.bisect keeps its builds apart from the ones discovery runs)."""
        self.store = Store(root or store_root())
        self.root = self.store.root
        self.jobs = jobs
        self.log = log
        self.progress = progress
        self.apt_conf = self.root / "apt" / "apt.conf"
        self.ccache_dir = ccache_dir or self.root / "ccache"
        self.wheels_dir = wheels_dir or self.root / "wheels"

    # --- sources ----------------------------------------------------------------------------------
    def offers(self) -> list[SourceOffer]:
        """The Debian sources of qemu the private deb-src lines offer, remembered until the private index
        changes: apt-cache parses five suites' source indexes (seconds), and a cached build must answer at once.
        """
        if not self.apt_conf.is_file():
            raise QemuBuildError(f"no private apt configuration at {self.apt_conf}: {SETUP_HINT}")
        apt_dir = self.apt_conf.parent
        stamps = [f"{p.name}:{p.stat().st_mtime_ns}" for p in (apt_dir / "lists", apt_dir / "sources.list")]

        def ask() -> dict[str, object]:
            env = {**os.environ, "APT_CONFIG": str(self.apt_conf)}
            out = _runner().query(["apt-cache", "madison", "qemu"], what="apt-cache madison", env=env)
            return {"offers": [[o.version, o.suite] for o in parse_madison(out)]}

        answer = remembered(self.root / "offers.json", "|".join(stamps), ask)
        return [SourceOffer(str(v), str(s)) for v, s in answer["offers"]]

    def debian_source(self, spec_text: str) -> Source:
        """The newest matching offer whose files the mirror still has: a release (``11.1``) falls back to
        the older offers of that release when the newest answers 404; an exact Debian version does not."""
        spec = parse_spec(spec_text)
        offers = ranked(spec, self.offers()) if spec.debian is None else [choose(spec, self.offers())]
        missing: list[tuple[SourceOffer, QemuBuildError]] = []
        for offer in offers:
            try:
                return self._debian_source(offer)
            except MissingFromMirror as exc:
                missing.append((offer, exc))
        if len(missing) == 1:
            raise missing[0][1]
        names = ", ".join(f"{o.version} ({o.suite})" for o, _ in missing)
        raise QemuBuildError(
            f"Debian's mirror has the source files of none of the {len(missing)} versions of qemu {spec_text} "
            f"apt's index lists: {names} answer 404 Not Found. Build another version, or refresh the index "
            "(scripts/setup-qemu-build.sh --refresh)."
        )

    def _debian_source(self, offer: SourceOffer) -> Source:
        tarball = self.fetch_tarball(offer)
        version = offer.version.split(":", 1)[-1]
        return Source(
            origin=f"built from Debian source {version}",
            digest=sha256_file(tarball),
            tarball=tarball,
            debian_version=offer.version,
            suite=offer.suite,
        )

    def fetch_tarball(self, offer: SourceOffer) -> Path:
        """The orig tarball of ``offer`` in ``src/``, downloaded with the private apt when missing."""
        src = self.root / "src"
        stem = re.sub(r"-[^-]*$", "", offer.version.split(":", 1)[-1])  # 10.2.2+ds
        found = sorted(src.glob(f"qemu_{stem}.orig.tar.*"))
        if found:
            return found[0]
        self.log(f"fetching Debian's source of qemu {offer.version} ({offer.suite})")
        try:
            Apt(_runner(), config=self.apt_conf).source_tarball(
                "qemu", offer.version, src, what=f"apt-get source qemu={offer.version}"
            )
        except BuildError as exc:
            raise missing_from_mirror(exc, offer) from None
        found = sorted(src.glob(f"qemu_{stem}.orig.tar.*"))
        if not found:
            raise QemuBuildError(f"apt-get source left no qemu_{stem}.orig.tar.* in {src}")
        return found[0]

    @staticmethod
    def local_source(path: Path) -> Source:
        """A tree (digest of every file but version control's) or a tarball (digest of the file)."""
        path = path.resolve()
        if path.is_file():
            return Source(origin=f"built from {path}", digest=sha256_file(path), tarball=path)
        if not (path / "configure").is_file():
            raise QemuBuildError(f"{path}: neither a QEMU source tree (no configure script) nor a tarball")
        digest = InputDigest()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not _ignored(p.relative_to(path))):
            digest.file(str(file.relative_to(path)), file)
        return Source(origin=f"built from {path}", digest=digest.key(64), tree=path)

    # --- build ------------------------------------------------------------------------------------
    def build(self, source: Source | str) -> BuiltQemu:
        """The build of ``source`` (a Source, or a SPEC resolved through apt), from the Store when it is
        there: the look-up costs one apt-cache call and one hash of the tarball."""
        with self.store.locked():
            if isinstance(source, str):
                source = self.debian_source(source)
            ccache = shutil.which("ccache") is not None
            args = configure_args(ccache=ccache)
            key = cache_key(source.digest, args)
            done = self.store.find(key, marker=MANIFEST)
            if done is not None:
                return BuiltQemu(done / BINARY_REL, json.loads((done / MANIFEST).read_text()), cached=True)
            return self._build(source, key, args, ccache)

    def _build(self, source: Source, key: str, args: tuple[str, ...], ccache: bool) -> BuiltQemu:
        runner = _runner()
        log = self.root / "logs" / f"{key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        start = time.monotonic()
        self.log(f"building {source.origin.removeprefix('built from ')} (log: {log})")
        with self.store.publishing(key) as staging:
            src = staging / "src"
            if source.tarball is not None:
                self.log(f"unpacking {source.tarball.name}")
                top = unpack(source.tarball, src)
            else:
                assert source.tree is not None
                top = src / tree_folder(source.tree)
                shutil.copytree(source.tree, top, symlinks=True, ignore=_IGNORED)
            make_buildable(runner, top, self.wheels_dir, self.log)
            build = staging / "build"
            build.mkdir()
            env = ccache_env(self.ccache_dir, staging) if ccache else None
            self.log("configuring (x86_64-softmmu only)")
            runner.run([*NICE, str(top / "configure"), *args], what="configure", cwd=build, env=env, log=log)
            self.log(f"compiling with {self.jobs} jobs")
            ninja = [*NICE, "ninja", "-C", str(build), f"-j{self.jobs}", BINARY_NAME]
            with self._following(log):
                runner.run(ninja, what=f"ninja {BINARY_NAME}", env=env, log=log)
            binary = staging / BINARY_REL
            binary.parent.mkdir(parents=True)
            shutil.copy2(build / BINARY_NAME, binary)
            version = check_binary(binary)
            shutil.rmtree(src)
            shutil.rmtree(build)
            shutil.copy2(log, staging / "build.log")
            manifest: dict[str, object] = {
                "origin": source.origin,
                "qemu_version": version,
                "debian_version": source.debian_version,
                "suite": source.suite,
                "source": str(source.tarball or source.tree),
                "source_digest": source.digest,
                "configure": list(args),
                "recipe": RECIPE_VERSION,
                "ccache": ccache,
                "build_seconds": round(time.monotonic() - start, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        self.log(f"built QEMU {version} in {manifest['build_seconds']} s -> {self.store.path(key) / BINARY_REL}")
        return BuiltQemu(self.store.path(key) / BINARY_REL, manifest, cached=False)

    @contextmanager
    def _following(self, log: Path) -> Iterator[None]:
        """Reports ninja's ``[done/total]`` from the log every second while the block runs."""
        if self.progress is None:
            yield
            return
        report = self.progress
        stop = threading.Event()

        def follow() -> None:
            last = (0, 0)
            while not stop.wait(1.0):
                now = ninja_progress(log)
                if now is not None and now != last:
                    last = now
                    report(*now)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def missing_from_mirror(exc: BuildError, offer: SourceOffer) -> BuildError:
    """``exc`` said plainly when apt's download answered 404: the index lists a version whose files the mirror
    no longer holds (seen for superseded and backported versions), which no retry fixes."""
    if "404" not in str(exc):
        return exc
    return MissingFromMirror(
        f"Debian's mirror no longer has the source files of qemu {offer.version} ({offer.suite}): apt's index "
        "lists the version but the download answers 404 Not Found. Build another version, or refresh the "
        f"index (scripts/setup-qemu-build.sh --refresh).\n{exc.log_tail}"
    )


def ninja_progress(log: Path) -> tuple[int, int] | None:
    """The last ``[done/total]`` ninja wrote to ``log``, or None."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    found = re.findall(r"^\[(\d+)/(\d+)\]", tail, flags=re.M)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def tree_folder(tree: Path) -> str:
    """The folder a local tree is copied to: ``qemu-<VERSION>``, the name Debian's orig tarball unpacks to,
    whatever the user's folder is called. ccache hashes paths relative to the staging folder (tree.ccache_env),
    so a tree of 10.2.2 hits what the tarball's build compiled, and every commit of a bisection hits the last."""
    try:
        version = (tree / "VERSION").read_text().strip()
    except OSError:
        return tree.name
    return f"qemu-{version}" if re.fullmatch(r"[0-9][0-9A-Za-z.+~-]*", version) else tree.name


def _ignored(rel: Path) -> bool:
    return bool(rel.parts) and rel.parts[0] in {".git", "build", "_build"}
