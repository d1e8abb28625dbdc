#!/usr/bin/env bash
# Writes this directory's repository with the xenvault of commit f6c2395 (restore-point
# metadata layout 1), from a simulated pool with 8 MiB disks:
#   git worktree add /tmp/old-format f6c2395
#   (cd /tmp/old-format && CARGO_TARGET_DIR=/tmp/old-format-target cargo build --bin xenvault)
#   bash make.sh /tmp/old-format-target/debug/xenvault
set -euo pipefail
bin=$(realpath "$1")
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill $sim 2>/dev/null; rm -rf "$work"' EXIT
export XENVAULT_CONFIG=$work/config.toml XENVAULT_CACHE_DIR=$work/cache
export XENVAULT_PASSPHRASE="$(cat "$out/passphrase")" XENVAULT_REPO=$out/repo
"$bin" sim serve --state-dir "$work/sim" --listen 127.0.0.1:0 --nbd-port 0 --blank-disks-mib 8 >"$work/sim.out" 2>"$work/sim.err" &
sim=$!
until grep -q '^listening on ' "$work/sim.out"; do sleep 0.2; done
url=$(sed -n 's/^listening on //p' "$work/sim.out")
fingerprint=$(sed -n 's/^certificate SHA-256 fingerprint //p' "$work/sim.err")
export XENVAULT_SIM_URL=$url
echo -n xenvault > "$work/pool.password"
"$bin" pool add sim --url "$url" --fingerprint "$fingerprint" --password-file "$work/pool.password"
rm -rf "$out/repo"
"$bin" init --kdf-memory-mib 1 --kdf-iterations 1
# The VM's disk uuids in device order (the official XenAPI SDK, as any client would).
vdis=$(python3 -c '
import sys, XenAPI
s = XenAPI.Session(sys.argv[1], ignore_ssl=True)
s.xenapi.login_with_password("root", "xenvault")
vm = s.xenapi.VM.get_by_name_label("debian-web")[0]
vbds = [s.xenapi.VBD.get_record(b) for b in s.xenapi.VM.get_VBDs(vm)]
disks = sorted((int(b["userdevice"]), b["VDI"]) for b in vbds if b["type"] == "Disk")
print(" ".join(s.xenapi.VDI.get_uuid(v) for _, v in disks))' "$url")
# expected.txt: restore point, disk position, SHA-256 of the disk it holds (nothing
# writes to a disk between a backup and its digest).
digests() {
    local id position=0
    id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["vms"][0]["restore_point"])' < "$work/$1.json")
    for v in $vdis; do echo "$1 $id $position $("$bin" sim sha256 "$v")"; position=$((position + 1)); done
}
# Guest data: scattered random writes, so the disks hold more than zeros.
seed=1
for v in $vdis; do "$bin" sim scribble "$v" 2 --seed $seed >/dev/null; seed=$((seed + 1)); done
"$bin" backup --pool sim --vm debian-web --level full --json > "$work/full.json"
digests full > "$out/expected.txt"
"$bin" sim scribble ${vdis%% *} 1 --seed 9 >/dev/null
"$bin" backup --pool sim --vm debian-web --json > "$work/inc.json"
digests inc >> "$out/expected.txt"
"$bin" backup --pool sim --vm debian-web --level copy --format xva --json > "$work/xva.json"
digests xva >> "$out/expected.txt"
# A file backed up with backup-image: 1 MiB of text.
seq 1 200000 > "$work/disk.img"
truncate -s 1M "$work/disk.img"
"$bin" backup-image "$work/disk.img" --source-id disk.img --json > "$work/image.json"
id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshot"]["id"])' < "$work/image.json")
echo "image $id 0 $(sha256sum < "$work/disk.img" | cut -d' ' -f1)" >> "$out/expected.txt"
# How each disk was read (the incremental must be CBT + NBD).
for run in full inc xva; do
    python3 -c 'import json, sys; [print(sys.argv[1], d["position"], d["strategy"], d["transport"]) for d in json.load(sys.stdin)["vms"][0]["disks"]]' $run < "$work/$run.json"
done
"$bin" snapshots --json > "$out/restore-points.json"
du -sh "$out/repo"
