# shellcheck shell=bash
# Sourced by every scripts/setup*.sh, never run: the set-up steps they share, written once. Why: each script
# had its own copy of the check-then-install block for Debian packages (one checked with dpkg -s, which
# counts a removed package whose configuration files remain as installed) and two had the same one-liner
# finding the machine's Debian mirror.
# Before sourcing, set log_prefix (each log line starts with it). Sets `here` (the checkout) and `cache`
# ($MIGCONFORM_CACHE, else <checkout>/.cache: the rule harness/settings.py's cache_root() follows).

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034  # read by the scripts that source this file
cache="${MIGCONFORM_CACHE:-$here/.cache}"

log() { printf '%s: %s\n' "${log_prefix:-setup}" "$*" >&2; }

# need_root WHAT...: stop with a message naming what needs installing, unless running as root.
need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "installing Debian packages needs root (run as root, or install them yourself): $*"
    exit 1
  fi
}

# apt_update: apt-get update, at most once per script (set apt_updated=0 to ask for another, e.g. after adding
# a source).
apt_updated=0
apt_update() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
}

# missing_packages PKG...: prints the ones that are not installed (dpkg's "install ok installed"), one a line.
missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || printf '%s\n' "$p"
  done
}

# ensure_packages PKG...: installs those not installed yet (needs root only then). The package lists are used
# as they are, and refreshed once if the install fails with them.
ensure_packages() {
  local missing=()
  mapfile -t missing < <(missing_packages "$@")
  [ "${#missing[@]}" -gt 0 ] || return 0
  need_root "${missing[*]}"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt_update && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

# debian_mirror: the mirror the machine's own (non-security) Debian source names, or nothing; so a source the
# scripts add contacts nothing new.
debian_mirror() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '/security/ {next} /^URIs:/ {print $2; exit} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
    || true
}

# private_deb_src DIR SUITE...: a PRIVATE apt configuration in DIR (DIR/apt.conf, for APT_CONFIG) with a deb-src
# line per suite on the machine's own mirror, its source index fetched into DIR/lists when missing (delete
# DIR/lists to fetch it again). Why private: `apt-get source` then finds Debian's QEMU sources without touching the system's
# sources, lists or caches (other tools on the machine keep seeing exactly the apt state they saw before).
private_deb_src() {
  local dir=$1
  shift
  local mirror suite want=""
  mirror=$(debian_mirror)
  if [ -z "$mirror" ]; then
    log "no Debian mirror found in /etc/apt/sources.list{,.d}: add the machine's bookworm source first"
    exit 1
  fi
  mkdir -p "$dir/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial"
  for suite in "$@"; do want+="deb-src $mirror $suite main"$'\n'; done
  if [ ! -f "$dir/sources.list" ] || [ "$(cat "$dir/sources.list")"$'\n' != "$want" ]; then
    printf '%s' "$want" > "$dir/sources.list"
    rm -f "$dir/lists/"*Sources* 2>/dev/null || true
  fi
  cat > "$dir/apt.conf" <<CONF
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "$dir/sources.list.d";
Dir::State::Lists "$dir/lists";
Dir::Cache "$dir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
  if ! ls "$dir/lists/"*Sources* >/dev/null 2>&1; then
    log "fetching the source index of $* into $dir/lists (private)"
    APT_CONFIG="$dir/apt.conf" apt-get update -qq
  fi
}
