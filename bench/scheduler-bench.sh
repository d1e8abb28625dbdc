#!/usr/bin/env bash
# Scheduler overhead over a large pool: the simulator seeded with N halted VMs (`sim serve
# --fleet-vms N`: clones of the template, small blank disks shared copy-on-write) and
# `xenvault server` with a job selecting them by tag (smart selection `fleet`). Prints:
#   selection     time to resolve the job's selection over the pool (POST /api/pools/sim/preview,
#                 the code a run uses: pool login, all VM and host records, matching), 5 times
#   trigger       time from "run now" (POST /api/jobs/ID/run) to the first VM.snapshot the
#                 simulator sees (an event.from watcher sees the snapshot record's creation),
#                 and inside the run: queued -> started, started -> first VM task
#   memory        the server's RSS idle before the run and its peak (VmHWM) after the run
#   the whole run: VMs backed up and time per VM (context, not the subject)
# Dev profile (the one the tests build): our crates unoptimised, dependencies at -O2.
#
# Usage: bench/scheduler-bench.sh [--vms 1000] [--disk-mib 4] [--concurrency 4] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

vms=1000 disk_mib=4 concurrency=4 dir=/tmp/xenvault-scheduler-bench
while (($#)); do
  case $1 in
    --vms) vms=$2; shift 2 ;;
    --disk-mib) disk_mib=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
python3 -c 'import XenAPI' 2>/dev/null || python3 -m pip install -q XenAPI
cargo build -q -p xenvault --bin xenvault

rm -rf "$dir" && mkdir -p "$dir"
trap 'kill ${server_pid:-} ${sim_pid:-} ${watcher_pid:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT

echo "== simulator: $vms fleet VMs with ${disk_mib} MiB disks"
sim_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/debug/xenvault sim serve --state-dir "$dir/sim" --listen "127.0.0.1:$sim_port" --nbd-port 0 \
  --blank-disks-mib "$disk_mib" --fleet-vms "$vms" >"$dir/sim.out" 2>"$dir/sim.log" &
sim_pid=$!
for _ in $(seq 600); do
  grep -q '^listening on' "$dir/sim.out" && break
  kill -0 "$sim_pid" 2>/dev/null || { cat "$dir/sim.log" >&2; exit 1; }
  sleep 0.2
done
sim_url=$(sed -n 's/^listening on //p' "$dir/sim.out")
sim_pin=$(sed -n 's/^certificate SHA-256 fingerprint //p' "$dir/sim.log")

export XENVAULT_PASSPHRASE=scheduler-bench
target/debug/xenvault init --repo "$dir/repo" >/dev/null
bench_server "$dir"

# api METHOD PATH [JSON]: the answer's body; fails on an error answer.
api() {
  curl -ksf -X "$1" -H "authorization: Bearer $token" -H 'content-type: application/json' \
    ${3:+-d "$3"} "$server_url$2"
}
json_field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }

api POST /api/pools "{\"name\": \"sim\", \"url\": \"$sim_url\", \"password\": \"xenvault\", \"fingerprint\": \"$sim_pin\"}" >/dev/null
api POST /api/repositories "{\"name\": \"local\", \"location\": \"$dir/repo\", \"passphrase\": \"$XENVAULT_PASSPHRASE\"}" >/dev/null
selection='{"smart": {"tags": ["fleet"]}}'
job_id=$(api POST /api/jobs "{\"name\": \"fleet\", \"pool\": \"sim\", \"repository\": \"local\",
  \"selection\": $selection, \"schedules\": [{\"cron\": \"0 2 * * *\", \"retention\": {\"daily\": 7}}],
  \"settings\": {\"vm_concurrency\": $concurrency}}" | json_field '["id"]')

echo "== selection over the pool (POST /api/pools/sim/preview), 5 times"
for i in 1 2 3 4 5; do
  out=$(curl -ksf -o "$dir/preview.json" -w '%{time_total}' -X POST -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d "$selection" "$server_url/api/pools/sim/preview")
  matched=$(json_field '.__len__()' <"$dir/preview.json")
  printf '   %d: %4d VMs matched in %6.1f ms\n' "$i" "$matched" "$(python3 -c "print($out * 1000)")"
done

# Prints the wall clock (ns) when the first snapshot record appears on the pool.
cat >"$dir/watch.py" <<'PY'
import sys, time, XenAPI
url, password = sys.argv[1:3]
session = XenAPI.Session(url, ignore_ssl=True)
session.xenapi.login_with_password("root", password, "1.0", "scheduler-bench")
event_from = getattr(session.xenapi.event, "from")
token = event_from(["VM"], "", 0.0)["token"]
print("watching", flush=True)
while True:
    batch = event_from(["VM"], token, 30.0)
    token = batch["token"]
    for event in batch["events"]:
        if event["operation"] == "add" and event.get("snapshot", {}).get("is_a_snapshot"):
            print(time.time_ns(), flush=True)
            sys.exit(0)
PY
python3 "$dir/watch.py" "$sim_url" xenvault >"$dir/watch.out" 2>"$dir/watch.log" &
watcher_pid=$!
for _ in $(seq 300); do
  grep -q watching "$dir/watch.out" && break
  kill -0 "$watcher_pid" 2>/dev/null || { cat "$dir/watch.log" >&2; exit 1; }
  sleep 0.1
done

rss() { awk -v f="$1:" '$1 == f {print int($2 / 1024)}' "/proc/$server_pid/status"; }
idle_rss=$(rss VmRSS)
triggered=$(date +%s%N)
run_id=$(api POST "/api/jobs/$job_id/run" '{}' | json_field '["id"]')
wait "$watcher_pid" || { cat "$dir/watch.log" >&2; exit 1; }
first_snapshot=$(cat "$dir/watch.out" | tail -1)
echo "== trigger (run now) to the first VM.snapshot on the pool: $(((first_snapshot - triggered) / 1000000)) ms"

while :; do
  api GET "/api/runs/$run_id" >"$dir/run.json"
  python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["run"]["finished_at"] is not None)' \
    "$dir/run.json" || break
  sleep 1
done
python3 - "$dir/run.json" <<'PY'
import json, sys
from datetime import datetime
detail = json.load(open(sys.argv[1]))
run = detail["run"]
at = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))
first_vm = min(at(t["started_at"]) for t in detail["tasks"] if t["kind"] == "vm")
ms = lambda a, b: (b - a).total_seconds() * 1000
print(f"   inside the run: queued -> started {ms(at(run['queued_at']), at(run['started_at'])):.1f} ms, "
      f"started -> first VM task {ms(at(run['started_at']), first_vm):.1f} ms (pool login + selection)")
total = run["totals"]
secs = (at(run["finished_at"]) - at(run["started_at"])).total_seconds()
print(f"== the run: {run['status']}, {total['vms_ok']}/{total['vms']} VMs in {secs:.1f} s "
      f"({secs / max(total['vms'], 1) * 1000:.0f} ms per VM at the job's concurrency)")
PY
echo "== server memory: RSS idle before the run $idle_rss MiB, peak (VmHWM) $(rss VmHWM) MiB"
