"""Building QEMU from source: the recipe of `migconform qemu build` (any Debian source, or a local tree or
tarball) and the steps it shares with the mutant builds (harness.mutants.build). docs/qemu-builds.md."""
