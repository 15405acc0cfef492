#!/usr/bin/env bash
# Host packages the VFIO lab build needs (docs/vfio-lab.md). Idempotent: installs only what is missing.
# The kernel itself is never installed: harness/vfio_lab/build.py fetches it with apt-get download and
# unpacks it with dpkg -x into the cache.
#  - make, gcc-12 (the compiler Debian built its 6.12 kernel with), libc6-dev: out-of-tree modules
#    (mtty personalities, mdpy, vfio.ko with iova_bitmap) against the downloaded headers;
#  - patch: the mtty personality patch; binutils: strip for the modules;
#  - zstd, xz-utils: unpacking the kernel ELF for the PVH boot, and the source tarball;
#  - busybox-static: the host side of the initramfs (its cpio); the guest's copy is downloaded.
# Not needed: bc, flex, bison (the kbuild package ships built tools), dwarves/pahole (the build turns
# off module BTF, docs/vfio-lab.md P2), kmod (module dependencies are read from modinfo).
set -euo pipefail
log() { printf 'setup-lab: %s\n' "$*" >&2; }

pkgs=(make gcc-12 libc6-dev patch binutils zstd xz-utils busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  log "build packages present"
else
  if [ "$(id -u)" != 0 ]; then
    log "installing ${missing[*]} needs root (run as root, or install them yourself)"
    exit 1
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Check that apt offers a complete kernel release of the lab's series (the pin lives in
# harness/vfio_lab/build.py), so a missing apt source is reported now rather than mid-build.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$here/.venv/bin/python" ]; then
  if ! out=$(cd "$here" && .venv/bin/python -m harness.vfio_lab.build --resolve-only 2>&1); then
    log "$out"
    exit 1
  fi
  log "lab kernel: $(printf '%s' "$out" | sed -n 's/.*"version": "\(.*\)".*/\1/p')"
fi
log "ready: .venv/bin/python -m harness.vfio_lab.build"
