#!/usr/bin/env bash
# Host packages the guest image build needs (docs/guests.md), then the image itself. Idempotent: installs only
# what is missing, and the build reuses its cache (<cache>/guest/<input hash>/) when nothing changed.
#  - gcc, libc6-dev: the guest workload (images/guest/memload.c), compiled static;
#  - lz4, zstd, xz-utils: unpacking the kernel's ELF from its bzImage for the faster PVH boot (Debian's 6.1
#    kernels use LZ4; without these the build falls back to booting the bzImage);
# The kernel and busybox-static for the guest are never installed on the host: harness/guest/image.py fetches
# them with apt-get download and unpacks them with dpkg-deb -x. cpio is not needed (the builder writes it).
set -euo pipefail
log_prefix=setup-guest
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ensure_packages gcc libc6-dev lz4 zstd xz-utils

# apt-cache needs package lists; a fresh machine may have none yet.
if ! apt-cache madison busybox-static 2>/dev/null | grep -q busybox-static; then
  if [ "$(id -u)" != 0 ]; then
    log "apt has no package lists: run apt-get update as root"
    exit 1
  fi
  apt_update
fi

# The builder is standard-library Python, so it runs before the project's virtual environment exists.
if ! out=$(cd "$here" && python3 -m harness.guest.image 2>&1); then
  log "$out"
  exit 1
fi
log "guest image: $(printf '%s\n' "$out" | sed -n 's/^digest  //p')"
