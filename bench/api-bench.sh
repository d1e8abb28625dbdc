#!/usr/bin/env bash
# API latency benchmark: `xenvault server` on loopback over a SQLite catalog holding 10,000
# runs (filled by the catalog bench's runs_bench example: 10 jobs, 3 VMs and 3 disks per
# run), loaded with wrk over HTTPS with an admin API token. Prints p50/p99 of
#   GET /api/runs                       the newest page (50 runs)
#   GET /api/runs?job=job-3&status=failed   a filtered listing
#   GET /api/runs?vm=vm-0042            runs that covered one VM
# with one connection (latency alone) and with 16 (under load), plus requests/s.
# Dev profile (the one the tests build): our crates unoptimised, dependencies at -O2.
#
# Usage: bench/api-bench.sh [--runs 10000] [--seconds 10] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

runs=10000 seconds=10 dir=/tmp/xenvault-api-bench
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if ! command -v wrk >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo build -q -p xenvault-catalog --example runs_bench
cargo build -q -p xenvault --bin xenvault

rm -rf "$dir" && mkdir -p "$dir/data"
echo "== catalog: $runs runs (the library's own query times follow)"
target/debug/examples/runs_bench "$dir/data" - "$runs"

trap 'kill "${server_pid:-}" 2>/dev/null; wait "${server_pid:-}" 2>/dev/null; rm -rf "$dir"' EXIT
bench_server "$dir"
url=$server_url
total=$(curl -ksf -H "authorization: Bearer $token" "$url/api/runs?limit=1" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["total"])')
echo "== API: xenvault server on $url, $total runs in the catalog, wrk for ${seconds}s per line"

# measure NAME PATH CONNECTIONS: one line of p50, p99 and requests/s.
measure() {
  local name=$1 path=$2 connections=$3 threads=$(($3 < 2 ? 1 : 2)) out
  curl -ksf -H "authorization: Bearer $token" "$url$path" -o /dev/null || { echo "GET $path failed" >&2; exit 1; }
  out=$(wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -H "authorization: Bearer $token" "$url$path")
  if grep -q "Non-2xx" <<<"$out"; then echo "$out" >&2; echo "GET $path: non-2xx answers" >&2; exit 1; fi
  awk -v name="$name" -v c="$connections" '
    $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 } $1 == "Requests/sec:" { rps = $2 }
    END { printf "%-40s c=%-3s p50 %9s  p99 %9s  %9s req/s\n", name, c, p50, p99, rps }' <<<"$out"
}
for connections in 1 16; do
  measure "GET /api/runs (newest 50)" "/api/runs" "$connections"
  measure "GET /api/runs?job=job-3&status=failed" "/api/runs?job=job-3&status=failed" "$connections"
  measure "GET /api/runs?vm=vm-0042" "/api/runs?vm=vm-0042" "$connections"
done
