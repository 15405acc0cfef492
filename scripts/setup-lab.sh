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
# Usage: scripts/setup-lab.sh [--series S]...   Without --series it prepares the default lab's build tools
# (what scripts/setup.sh runs). Each --series S (a row of harness/vfio_lab/kernels.py, e.g. 7.3; list them with
# `.venv/bin/python -m harness.vfio_lab.build --list`) also installs what that kernel needs (mmdebstrap for a
# newer suite's compiler chroot) and builds its lab now (cached; a cold 7.3 build is a few minutes).
set -euo pipefail
log_prefix=setup-lab
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
series=()
while [ $# -gt 0 ]; do
  case "$1" in
    --series) series+=("$2"); shift 2 ;;
    --series=*) series+=("${1#--series=}"); shift ;;
    *) log "unknown argument $1 (usage: scripts/setup-lab.sh [--series S]...)"; exit 2 ;;
  esac
done

ensure_packages make gcc-12 libc6-dev patch binutils zstd xz-utils busybox-static
log "build packages present"

# Check that apt offers a complete kernel release of the lab's series (the pin lives in
# harness/vfio_lab/kernel.py), so a missing apt source is reported now rather than mid-build.
if [ -x "$here/.venv/bin/python" ]; then
  if ! out=$(cd "$here" && .venv/bin/python -m harness.vfio_lab.build --resolve-only 2>&1); then
    log "$out"
    exit 1
  fi
  log "lab kernel: $(printf '%s' "$out" | sed -n 's/.*"version": "\(.*\)".*/\1/p')"
fi
for s in "${series[@]}"; do
  [ -x "$here/.venv/bin/python" ] || { log "--series needs the project's .venv: run scripts/setup.sh first"; exit 1; }
  toolchain=$(cd "$here" && .venv/bin/python -c \
    "from harness.vfio_lab.kernels import lab_kernel; print(lab_kernel('$s').toolchain or '')")
  [ -z "$toolchain" ] || ensure_packages mmdebstrap
  log "building the $s lab (cached after the first time)"
  (cd "$here" && .venv/bin/python -m harness.vfio_lab.build --series "$s" >/dev/null)
done
log "ready: .venv/bin/python -m harness.vfio_lab.build"
