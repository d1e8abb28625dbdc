#!/usr/bin/env bash
# Catalog query benchmark: the run listings the API serves (newest page, by job, status,
# VM, a deep page, a job and time window), run detail and last success per VM, with
# 10,000 runs (3 VMs and 3 disks each) in the catalog, on SQLite and on a private
# PostgreSQL 15 cluster (Debian's postgresql, started here on a free loopback port).
# Prints p50/p99 of 200 calls each (library calls, no HTTP: the API's own latency is
# measured with oha against `xenvault server`).
#
# Usage: bench/catalog-bench.sh [--runs 10000] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10000 dir=/tmp/xenvault-catalog-bench
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
pg=/usr/lib/postgresql/15/bin
[ -x "$pg/initdb" ] || { echo "PostgreSQL 15 is needed (apt-get install postgresql)" >&2; exit 1; }
cargo build -q -p xenvault-catalog --example runs_bench
bench=target/debug/examples/runs_bench

rm -rf "$dir" && mkdir -p "$dir"
as_owner() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$dir/pg"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir/pg"
as_owner "$pg/initdb -D $dir/pg/data -U xenvault --auth=trust -E UTF8" >/dev/null
as_owner "$pg/pg_ctl -D $dir/pg/data -l $dir/pg/server.log -w -o '-p $port -k $dir/pg -c listen_addresses=127.0.0.1' start" >/dev/null
trap 'as_owner "$pg/pg_ctl -D $dir/pg/data -m fast stop" >/dev/null; rm -rf "$dir"' EXIT

echo "== SQLite"
"$bench" "$dir/sqlite" - "$runs"
echo "== PostgreSQL 15"
"$bench" "$dir/postgres" "postgres://xenvault@127.0.0.1:$port/postgres" "$runs"
