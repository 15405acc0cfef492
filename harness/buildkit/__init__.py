"""The build kit: what every builder of migconform (a recipe) shares, so each recipe says only what it builds.

Recipes today: the guest image (harness.guest.image), the VFIO lab's L1 image (harness.vfio_lab.build), the
mutant QEMUs (harness.mutants.build) and any QEMU (harness.qemu_build.recipe). Standard library only:
scripts/setup-guest.sh builds the guest image before the project's virtual environment exists.

The pieces, each in its own module:

- :mod:`harness.buildkit.run`: :class:`Runner` runs commands (argv, cwd, env; output into a log file) and
  raises :class:`BuildError` (a ``harness.errors.MigconformError``) carrying argv, exit status and the
  log's tail. A recipe subclasses BuildError once (``GuestImageError``, ``LabBuildError``) and hands the
  subclass to its Runner, so its callers catch exactly its failures.
- :mod:`harness.buildkit.cache`: :class:`Store` is a recipe's folder under ``harness.settings.cache_root()``:
  entries ``<key>/``, an flock (:meth:`Store.locked`) and atomic publication (:meth:`Store.publishing`);
  :class:`InputDigest` makes the key from named inputs; :func:`remembered` keeps a slow look-up's answer
  until its key changes.
- :mod:`harness.buildkit.apt`: :class:`Apt` resolves and downloads Debian packages and source tarballs with
  the machine's apt, or a private ``APT_CONFIG``; :func:`apt_state` says when apt's answers may have changed.
- :mod:`harness.buildkit.kernel`: :func:`extract_vmlinux` takes the ELF out of a bzImage for the PVH boot.

A recipe is a function (or class) of the shape::

    runner = Runner(MyBuildError, hint="run scripts/setup-my.sh")
    store = Store(cache_root() / "mine")
    with store.locked():
        inputs = resolve_and_download()              # Apt(runner).versions / .download / .source_tarball
        key = InputDigest().text("recipe", RECIPE_VERSION).file("tarball", tarball).text(...).key()
        if (done := store.find(key)) is not None:
            return load(done)
        with store.publishing(key) as staging:       # renamed to <root>/<key> only if the block succeeds
            runner.run([...], what="configure", cwd=..., env=..., log=staging / "build.log")
            (staging / "manifest.json").write_text(...)   # the marker Store.find looks for: written last
    return load(store.path(key))

Keys: name every part of the digest, including a recipe version string bumped when a change to the recipe
alters what it builds (hashing the recipe's source instead would rebuild on every comment edit, which costs
minutes for a kernel and an hour for QEMU). The "any QEMU" recipe (harness.qemu_build.recipe,
``migconform qemu build``) has exactly this shape: tarball from :meth:`Apt.source_tarball`, key from the
tarball's hash and the configure line, the binary published as ``<key>/``.
"""

from harness.buildkit.apt import Apt, apt_state
from harness.buildkit.cache import InputDigest, Store, remembered, sha256_file
from harness.buildkit.kernel import extract_vmlinux
from harness.buildkit.run import BuildError, Runner

__all__ = [
    "Apt",
    "BuildError",
    "InputDigest",
    "Runner",
    "Store",
    "apt_state",
    "extract_vmlinux",
    "remembered",
    "sha256_file",
]
