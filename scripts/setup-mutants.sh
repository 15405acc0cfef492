#!/usr/bin/env bash
# Idempotent set-up for the mutation check (`migconform mutants`, docs/mutants.md): the Debian packages
# needed to build QEMU from Debian's own source, and a PRIVATE apt configuration with a deb-src line for
# bookworm-backports, so `apt-get source` can fetch the source of the installed QEMU 10.x without
# touching the system's sources, lists or caches (other tools on the machine keep seeing exactly the
# apt state they saw before).
# The build itself is done on demand by harness/mutants/build.py; re-running this script costs a second.
set -euo pipefail
log_prefix=setup-mutants
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
apt_dir="$cache/mutants/apt"

# --- 1. build dependencies -------------------------------------------------------------------------------
ensure_packages build-essential libglib2.0-dev libpixman-1-dev flex bison libfdt-dev ninja-build pkg-config \
  python3-venv python3-pip ccache dpkg-dev xz-utils libspice-protocol-dev

# --- 2. private apt configuration for deb-src (scripts/lib.sh) ---------------------------------------------
private_deb_src "$apt_dir" bookworm-backports
log "ready: APT_CONFIG=$apt_dir/apt.conf apt-get source --download-only qemu=<version>"
