#!/usr/bin/env bash
# One-command, idempotent set-up of everything migconform needs on a fresh Debian 12 machine (as root):
#  - QEMU 10.x from bookworm-backports (the default binary) and QEMU 7.2 from bookworm, unpacked with
#    dpkg -x into .cache/qemu/7.2 beside it (its own firmware and accelerator modules), so one run
#    compares two versions;
#  - the project in a virtual environment (.venv) with every dependency from pyproject.toml.
# Re-running it costs a few seconds: each step checks first.
set -euo pipefail
log_prefix=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

# --- 1. bookworm-backports apt source ---------------------------------------------------------------
backports_present() {
  grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}
if ! backports_present; then
  need_root "bookworm-backports source"
  # Use the same mirror as the machine's bookworm source, so nothing new is contacted.
  mirror=$(debian_mirror)
  mirror=${mirror:-http://deb.debian.org/debian}
  log "adding bookworm-backports from $mirror"
  cat > /etc/apt/sources.list.d/migconform-backports.sources <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=0
fi

# --- 2. Debian packages -------------------------------------------------------------------------------
# QEMU 10.x from backports; qemu-utils for qemu-img (blocker scenarios use image formats);
# seabios/ipxe firmware; busybox-static and friends for guest images; chromium to check the HTML report renders.
host_pkgs=(qemu-system-x86 qemu-utils)
ensure_packages seabios ipxe-qemu busybox-static python3-venv xz-utils zstd cpio chromium
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  v=$(qemu-system-x86_64 --version | head -n1 | sed -E 's/.*version ([0-9]+)\..*/\1/')
  [ "${v:-0}" -ge 10 ] && qemu_ok=1
fi
if [ "$qemu_ok" = 0 ]; then
  need_root "${host_pkgs[*]}"
  apt_update
  log "installing QEMU 10.x from bookworm-backports"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports "${host_pkgs[@]}"
fi

# --- 3. QEMU 7.2 from bookworm, unpacked side by side ---------------------------------------------------
q72="$cache/qemu/7.2"
if [ ! -x "$q72/usr/bin/qemu-system-x86_64" ] || [ ! -f "$q72/.complete" ]; then
  need_root "apt-get download of QEMU 7.2"
  apt_update
  # The newest 7.2 that bookworm itself (not backports) carries.
  ver=$(apt-cache madison qemu-system-x86 | awk -F'|' '$2 ~ /7\.2/ {gsub(/ /,"",$2); print $2; exit}')
  [ -n "$ver" ] || { log "no QEMU 7.2 in the apt sources (need bookworm main)"; exit 1; }
  log "unpacking QEMU $ver into $q72"
  rm -rf "$q72" && mkdir -p "$q72/debs"
  # Arch-independent packages (qemu-system-data) carry no binNMU suffix: resolve each one's own 7.2 version.
  for p in qemu-system-x86 qemu-system-common qemu-system-data qemu-utils qemu-block-extra; do
    pv=$(apt-cache madison "$p" | awk -F'|' '$2 ~ /:7\.2/ {gsub(/ /,"",$2); print $2; exit}')
    ( cd "$q72/debs" && apt-get download -qq "$p=$pv" >/dev/null )
  done
  # bookworm's own seabios: bios-256k.bin for -L, so 7.2 is self-contained.
  sver=$(apt-cache madison seabios | awk -F'|' '$3 ~ /bookworm\// && $3 !~ /backports/ {gsub(/ /,"",$2); print $2; exit}')
  ( cd "$q72/debs" && apt-get download -qq "seabios=$sver" "ipxe-qemu" >/dev/null )
  for f in "$q72"/debs/*.deb; do dpkg -x "$f" "$q72"; done
  rm -rf "$q72/debs"
  echo "$ver" > "$q72/.complete"
fi

# --- 4. the parts' own set-up: the VFIO lab's and the guest images' build tools ---------------------------
for part in setup-lab.sh setup-guest.sh; do
  if [ -f "$here/scripts/$part" ]; then
    bash "$here/scripts/$part"
  fi
done

# --- 5. virtual environment ---------------------------------------------------------------------------
venv="$here/.venv"
stamp="$venv/.migconform-installed"
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
extras="dev,avocado"
want=$( (cat "$here/pyproject.toml"; echo "$extras") | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing the project and its dependencies into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e "${here}[$extras]"
  echo "$want" > "$stamp"
fi
log "ready: $venv/bin/migconform"
