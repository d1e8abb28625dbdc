#!/usr/bin/env bash
# Backup engine benchmark (P1/P2): a simulated VM disk holding a mixed image (OS files,
# zeros, random data, a cloned region) is backed up in full, then 1% of it is written in
# scattered 4 KiB guest writes (sim.scribble) and it is backed up again (CBT + NBD).
# Prints time, throughput and bytes read from the host vs bytes changed, beside restic
# backing up the same image before and after the change (restic must re-read it all).
#
# Usage: bench/engine-bench.sh [--size 4G] [--chunk-size 64K] [--dir DIR] [--bin PATH]
#   --size        disk size (default 4G); --dir work directory (default /tmp/xenvault-engine-bench)
#   --chunk-size  repository chunk size (default 64K, the CBT granularity: an incremental
#                 then re-stores only the chunks CBT marks)
#   --bin         xenvault binary (default target/release/xenvault, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

size=4G chunk=64K dir=/tmp/xenvault-engine-bench bin=target/release/xenvault
while (($#)); do
  case $1 in
    --size) size=$2; shift 2 ;;
    --chunk-size) chunk=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v restic >/dev/null || { echo "restic is needed (apt-get install restic)" >&2; exit 1; }
[ -x "$bin" ] || cargo build --release -p xenvault
bin=$(realpath "$bin")
bytes=$(numfmt --from=iec "$size")
mib=$((bytes >> 20))
rm -rf "$dir" && mkdir -p "$dir" && dir=$(realpath "$dir")
image=$dir/disk.img changed=$dir/changed.img

echo "== generating a $size mixed image"
python3 - "$image" "$bytes" <<'PY'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
MiB = 1 << 20
rng = random.Random(7)
files = []
for root, _, names in os.walk("/usr/lib"):
    files += [os.path.join(root, n) for n in names]
rng.shuffle(files)
def os_bytes(n):
    out = bytearray()
    while len(out) < n and files:
        try:
            with open(files.pop(), "rb") as f:
                out += f.read(n - len(out))
        except OSError:
            pass
    return bytes(out.ljust(n, b"\0"))
with open(path, "wb") as f:
    written = 0
    while written < size:
        # A 64 MiB group: 24 MiB of OS files, 16 MiB unused, 16 MiB random, 8 MiB cloned.
        group = os_bytes(24 * MiB) + bytes(16 * MiB) + rng.randbytes(16 * MiB)
        group += group[:8 * MiB]
        piece = group[: size - written]
        f.write(piece)
        written += len(piece)
PY

echo "== starting the simulator (demo VMs with blank ${size} disks)"
"$bin" sim serve --state-dir "$dir/sim" --listen 127.0.0.1:0 --nbd-port 0 --blank-disks-mib "$mib" >"$dir/sim.log" 2>&1 &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "listening on" "$dir/sim.log" && break; sleep 0.5; done
url=$(sed -n 's/^listening on //p' "$dir/sim.log" | head -1)
[ -n "$url" ] || { cat "$dir/sim.log"; exit 1; }

# JSON-RPC helpers: load the image into the VM's disk, export the changed disk for restic.
xapi() {
  python3 - "$url" "$@" <<'PY'
import json, ssl, sys, urllib.parse, urllib.request
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
def host_of(path):
    # A raw transfer of a host-local disk must go to the host holding it (xapi answers 302).
    sr = call("VDI.get_SR", session, vdi)
    pbds = call("SR.get_PBDs", session, sr)
    if call("SR.get_shared", session, sr) or not pbds:
        return url + path
    address = call("host.get_address", session, call("PBD.get_host", session, pbds[0]))
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=f"{address}:{parts.port}").geturl() + path
if action == "vdi":
    print(call("VDI.get_uuid", session, vdi))
elif action == "import":
    size = __import__("os").path.getsize(args[0])
    target = host_of(f"/import_raw_vdi?session_id={session}&vdi={vdi}&format=raw")
    with open(args[0], "rb") as f:
        req = urllib.request.Request(target, data=f, method="PUT", headers={"Content-Length": str(size)})
        urllib.request.urlopen(req, context=ctx).read()
elif action == "export":
    target = host_of(f"/export_raw_vdi?session_id={session}&vdi={vdi}&format=raw")
    with urllib.request.urlopen(target, context=ctx) as r, open(args[0], "wb") as f:
        while chunk := r.read(8 << 20):
            f.write(chunk)
PY
}
xapi import "$image"
vdi=$(xapi vdi)

export XENVAULT_CONFIG=$dir/config.toml XENVAULT_PASSPHRASE=bench XENVAULT_POOL_PASSWORD=xenvault
"$bin" pool add bench --url "$url" --insecure >/dev/null
"$bin" init --repo "$dir/repo" --chunk-size "$chunk" >/dev/null

backup() { # level → JSON report in $dir/$1.json, wall seconds and peak RSS in $dir/$1.time
  /usr/bin/time -f "%e %M" -o "$dir/$1.time" "$bin" backup --pool bench --vm win-fileserver --repo "$dir/repo" \
    --level "$1" --json >"$dir/$1.json"
}
echo "== xenvault full backup"
backup full
echo "== guest writes: 1% of the disk in scattered 4 KiB writes"
"$bin" sim scribble --url "$url" --write-size 4096 --seed 11 "$vdi" 1
echo "== xenvault incremental backup"
backup inc

echo "== restic, same image before and after the change"
xapi export "$changed"
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$dir/restic
restic init -q
restic_run() { /usr/bin/time -f "%e %M" -o "$dir/$1.time" restic backup -q --stdin --stdin-filename disk.img <"$2"; }
restic_run restic-full "$image"
restic_run restic-inc "$changed"

python3 - "$dir" "$bytes" <<'PY'
import json, sys
d, size = sys.argv[1], int(sys.argv[2])
G = 1 << 30
def t(name):
    wall, rss = open(f"{d}/{name}.time").read().split()[-2:]
    return float(wall), int(rss) // 1024
print(f"\n{'run':<22}{'wall s':>8}{'GiB/s of disk':>15}{'read from host':>16}{'changed':>12}{'stored':>12}{'peak MiB':>10}")
full_wall = None
for level in ("full", "inc"):
    report = json.load(open(f"{d}/{level}.json"))
    disks = [x for vm in report["vms"] for x in vm["disks"]]
    read = sum(x["bytes_read"] for x in disks)
    changed = sum(x["bytes_changed"] for x in disks)
    stored = sum(x["bytes_stored"] for x in disks)
    wall, rss = t(level)
    full_wall = full_wall or wall
    strategy = ",".join(sorted({x["strategy"] for x in disks}))
    print(f"{'xenvault ' + level + ' (' + strategy + ')':<22}{wall:>8.1f}{size / G / wall:>15.2f}"
          f"{read / 2**20:>13.1f} MiB{changed / 2**20:>8.1f} MiB{stored / 2**20:>8.1f} MiB{rss:>10}")
    if level == "inc":
        print(f"  incremental: {wall / full_wall:.1%} of the full's time; read/changed = {read / max(changed, 1):.2f}; "
              f"guest wrote {size // 100 / 2**20:.1f} MiB")
for name in ("restic-full", "restic-inc"):
    wall, rss = t(name)
    print(f"{name:<22}{wall:>8.1f}{size / G / wall:>15.2f}{size / 2**20:>13.1f} MiB{'-':>12}{'-':>12}{rss:>10}")
PY
