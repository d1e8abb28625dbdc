#!/usr/bin/env bash
# CBT incremental benchmark (issue 16): a simulated VM disk loaded with a realistic image
# (GPT + ext4, ~60% full of real files from /usr) is backed up in full, then changed and
# backed up again twice (CBT + NBD):
#   scattered  1% of the disk in 4 KiB guest writes (~15% of the 64 KiB CBT blocks dirty)
#   clustered  1% of the disk in 1 MiB guest writes
# For each run: wall time, bytes read from the host, CBT-changed bytes, bytes stored, peak
# RSS, and the goal's bound: 1.3 x (changed bytes / the full backup's throughput) + 1 s,
# never above the full's time. Each incremental is exported from the repository and its
# SHA-256 compared with the simulator's (sim.sha256).
#
# Usage: bench/incremental-bench.sh [--size 4G] [--chunk-size 256K] [--dir DIR] [--bin PATH]
#   --size        disk size (default 4G)
#   --chunk-size  repository chunk size (default: the repository's own, 256K)
#   --dir         work directory (default /tmp/xenvault-incremental-bench; the image is kept
#                 there between runs)
#   --bin         xenvault binary (default target/release/xenvault, built if missing)
#   --perf        record each incremental with `perf record -g` (DIR/<run>.perf.data)
set -euo pipefail
cd "$(dirname "$0")/.."

size=4G chunk="" dir=/tmp/xenvault-incremental-bench bin=target/release/xenvault perf=""
while (($#)); do
  case $1 in
    --size) size=$2; shift 2 ;;
    --chunk-size) chunk=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --perf) perf=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in sgdisk mke2fs; do
  command -v $tool >/dev/null || { echo "$tool is needed (apt-get install gdisk e2fsprogs)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed (apt-get install time)" >&2; exit 1; }
[ -x "$bin" ] || cargo build --release -p xenvault
bin=$(realpath "$bin")
bytes=$(numfmt --from=iec "$size")
mib=$((bytes >> 20))
mkdir -p "$dir" && dir=$(realpath "$dir")
image=$dir/disk-$size.img
rm -rf "$dir/sim" "$dir/repo" "$dir"/*.json "$dir"/*.time "$dir/config.toml"

# GPT with one Linux partition from 1 MiB to 1 MiB before the end, formatted ext4 and
# filled by mke2fs -d with files of /usr (a seeded shuffle) up to 60% of the partition.
if [ ! -f "$image" ]; then
  echo "== generating a $size GPT+ext4 image of real files"
  staging=$dir/staging
  rm -rf "$staging" && mkdir -p "$staging"
  part_bytes=$((bytes - (2 << 20)))
  python3 - "$staging.list" $((part_bytes * 60 / 100)) <<'PY'
import os, random, sys
listing, budget = sys.argv[1], int(sys.argv[2])
files = []
for top in ("/usr/lib", "/usr/share", "/usr/bin", "/usr/libexec"):
    for root, _, names in os.walk(top):
        for name in names:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(p)
files.sort()
random.Random(16).shuffle(files)
total = 0
with open(listing, "w") as out:
    for p in files:
        size = os.path.getsize(p)
        if total + size > budget:
            continue
        total += size
        out.write(p.lstrip("/") + "\n")
print(f"{total >> 20} MiB of files")
PY
  tar -C / -cf - --verbatim-files-from -T "$staging.list" 2>/dev/null | tar -C "$staging" -xf -
  truncate -s "$bytes" "$image.tmp"
  # mke2fs -d clears the first sectors: the partition table comes after.
  mke2fs -q -F -t ext4 -b 4096 -E offset=$((1 << 20)) -d "$staging" "$image.tmp" $((part_bytes / 4096))
  sgdisk -n "1:2048:+$((part_bytes >> 10))K" -t 1:8300 "$image.tmp" >/dev/null
  mv "$image.tmp" "$image"
  rm -rf "$staging" "$staging.list"
fi

echo "== starting the simulator (demo VMs with blank ${size} disks)"
"$bin" sim serve --state-dir "$dir/sim" --listen 127.0.0.1:0 --nbd-port 0 --blank-disks-mib "$mib" >"$dir/sim.log" 2>&1 &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "listening on" "$dir/sim.log" || ! kill -0 $sim_pid 2>/dev/null && break; sleep 0.5; done
url=$(sed -n 's/^listening on //p' "$dir/sim.log" | head -1)
[ -n "$url" ] || { cat "$dir/sim.log"; exit 1; }

# The VM's first disk: its uuid, or the image imported into it (to the host holding it).
xapi() {
  python3 - "$url" "$@" <<'PY'
import json, os, ssl, sys, urllib.parse, urllib.request
url, action, *args = sys.argv[1:]
ctx = ssl._create_unverified_context()
def call(method, *params):
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/jsonrpc", body), context=ctx) as r:
        answer = json.load(r)
    if "error" in answer and answer["error"]:
        sys.exit(f"{method}: {answer['error']}")
    return answer["result"]
session = call("session.login_with_password", "root", "xenvault", "1.0", "bench")
vm = call("VM.get_by_name_label", session, "win-fileserver")[0]
vbd = [v for v in call("VM.get_VBDs", session, vm) if call("VBD.get_userdevice", session, v) == "0"][0]
vdi = call("VBD.get_VDI", session, vbd)
if action == "vdi":
    print(call("VDI.get_uuid", session, vdi))
elif action == "import":
    target = url + f"/import_raw_vdi?session_id={session}&vdi={vdi}&format=raw"
    sr = call("VDI.get_SR", session, vdi)
    pbds = call("SR.get_PBDs", session, sr)
    if not call("SR.get_shared", session, sr) and pbds:
        address = call("host.get_address", session, call("PBD.get_host", session, pbds[0]))
        parts = urllib.parse.urlsplit(target)
        target = parts._replace(netloc=f"{address}:{parts.port}").geturl()
    with open(args[0], "rb") as f:
        headers = {"Content-Length": str(os.path.getsize(args[0]))}
        urllib.request.urlopen(urllib.request.Request(target, data=f, method="PUT", headers=headers), context=ctx).read()
PY
}
xapi import "$image"
vdi=$(xapi vdi)

export XENVAULT_CONFIG=$dir/config.toml XENVAULT_PASSPHRASE=bench XENVAULT_POOL_PASSWORD=xenvault
"$bin" pool add bench --url "$url" --insecure >/dev/null
"$bin" init --repo "$dir/repo" ${chunk:+--chunk-size "$chunk"} >/dev/null

backup() { # run level → JSON report in $dir/$1.json, wall seconds and peak RSS in $dir/$1.time
  local run=$1 level=$2 record=()
  [ -n "$perf" ] && [ "$level" != full ] && record=(perf record -q -g -o "$dir/$run.perf.data" --)
  /usr/bin/time -f "%e %M" -o "$dir/$run.time" "${record[@]}" "$bin" backup --pool bench --vm win-fileserver \
    --repo "$dir/repo" --level "$level" --json >"$dir/$run.json"
}
# The newest restore point's disk, exported from the repository, against the simulator's.
check_restore() {
  local want got
  want=$("$bin" sim sha256 --url "$url" "$vdi")
  got=$("$bin" export latest --repo "$dir/repo" --vm win-fileserver --format raw --to - | sha256sum | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "$1: the restore point differs from the disk ($got, want $want)" >&2; exit 1; }
  echo "$1 restores byte-exact (sha256 $got)"
}

echo "== full backup"
backup full full
echo "== scattered change: 1% of the disk in 4 KiB writes, then an incremental"
"$bin" sim scribble --url "$url" --write-size 4096 --seed 11 "$vdi" 1 >/dev/null
backup scattered inc
check_restore scattered
echo "== clustered change: 1% of the disk in 1 MiB writes, then an incremental"
"$bin" sim scribble --url "$url" --write-size $((1 << 20)) --seed 12 "$vdi" 1 >/dev/null
backup clustered inc
check_restore clustered

python3 - "$dir" "$bytes" <<'PY'
import json, sys
d, size = sys.argv[1], int(sys.argv[2])
MiB = 2**20
def timing(run):
    wall, rss = open(f"{d}/{run}.time").read().split()[-2:]
    return float(wall), int(rss) // 1024
print(f"\n{'run':<24}{'wall s':>8}{'bound s':>9}{'read MiB':>10}{'changed MiB':>13}{'stored MiB':>12}{'peak MiB':>10}")
full_wall = timing("full")[0]
throughput = size / full_wall
for run in ("full", "scattered", "clustered"):
    disks = [x for vm in json.load(open(f"{d}/{run}.json"))["vms"] for x in vm["disks"]]
    read, changed, stored = (sum(x[k] for x in disks) for k in ("bytes_read", "bytes_changed", "bytes_stored"))
    wall, rss = timing(run)
    strategy = ",".join(sorted({x["strategy"] for x in disks}))
    bound = "" if run == "full" else f"{min(1.3 * changed / throughput + 1, full_wall):.1f}"
    print(f"{run + ' (' + strategy + ')':<24}{wall:>8.1f}{bound:>9}{read / MiB:>10.1f}{changed / MiB:>13.1f}"
          f"{stored / MiB:>12.1f}{rss:>10}")
print(f"full backup throughput {throughput / 1e6:.0f} MB/s; bound = min(1.3 x changed / throughput + 1 s, full)")
PY
