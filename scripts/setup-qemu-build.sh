#!/usr/bin/env bash
# Idempotent set-up for `migconform qemu build` (docs/qemu-builds.md): the Debian packages that build
# qemu-system-x86_64 from Debian's source (compiler, libraries, ccache, dtc), the firmware a built binary
# boots with (seabios, ipxe-qemu, qemu-system-data: Debian's +ds tarballs carry no firmware blobs), and a
# PRIVATE apt configuration with deb-src lines for every suite that may carry a QEMU worth building, so
# `apt-get source` finds it without touching the system's apt state.
# Usage: scripts/setup-qemu-build.sh [--refresh]   (--refresh: fetch the private source index again, e.g.
# when a version apt lists is gone from the mirror).
# The build itself runs on demand (harness/qemu_build); re-running this script costs a second.
set -euo pipefail
log_prefix=setup-qemu-build
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
apt_dir="$cache/qemu-builds/apt"

# --- 1. build dependencies and firmware ----------------------------------------------------------------
ensure_packages build-essential libglib2.0-dev libpixman-1-dev flex bison libfdt-dev device-tree-compiler \
  ninja-build pkg-config python3-venv python3-pip ccache dpkg-dev xz-utils bzip2 libspice-protocol-dev \
  seabios ipxe-qemu qemu-system-data

# --- 2. private apt configuration for deb-src (scripts/lib.sh) ---------------------------------------------
if [ "${1:-}" = --refresh ]; then
  rm -f "$apt_dir/lists/"*Sources* 2>/dev/null || true
fi
private_deb_src "$apt_dir" bookworm-backports trixie trixie-backports forky sid
log "ready: migconform qemu build VERSION (e.g. 10.2)"
