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

# --- 2. private apt configuration for deb-src --------------------------------------------------------------
# The mirror is the one the machine's own bookworm source names, so nothing new is contacted.
mirror=$(debian_mirror)
if [ -z "$mirror" ]; then
  log "no Debian mirror found in /etc/apt/sources.list{,.d}: add the machine's bookworm source first"
  exit 1
fi
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
want_sources="deb-src $mirror bookworm-backports main"
if [ ! -f "$apt_dir/sources.list" ] || [ "$(cat "$apt_dir/sources.list")" != "$want_sources" ]; then
  printf '%s\n' "$want_sources" > "$apt_dir/sources.list"
  rm -f "$apt_dir/lists/"*Sources* 2>/dev/null || true
fi
cat > "$apt_dir/apt.conf" <<CONF
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "$apt_dir/sources.list.d";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
if ! ls "$apt_dir/lists/"*Sources* >/dev/null 2>&1; then
  log "fetching the bookworm-backports source index into $apt_dir/lists (private)"
  APT_CONFIG="$apt_dir/apt.conf" apt-get update -qq
fi
log "ready: APT_CONFIG=$apt_dir/apt.conf apt-get source --download-only qemu=<version>"
