#!/usr/bin/env bash
# The long fuzzing run (not in CI): builds every target with cargo-fuzz (libFuzzer,
# AddressSanitizer, debug assertions) and runs each for RUNS executions (default 10M),
# then prints executions, exec/s, new inputs and crashes per target.
#
#   bash fuzz/run-long.sh                 # every target, 10M executions each
#   RUNS=100000 bash fuzz/run-long.sh nbd repo_pack
#   MAX_TIME=120 bash fuzz/run-long.sh   # at most 120 s per target instead
#
# New interesting inputs go to fuzz/target/corpus/<target> (not committed); the seeds in
# fuzz/corpus/<target> are only read. A crash leaves its input in fuzz/artifacts/<target>/:
# fix the parser, then copy the input into fuzz/corpus/<target>/ so that
# `cargo test -p xenvault-fuzzing` (CI) replays it from then on.
set -uo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-0} # seconds per target, 0: no limit
# Per input: seconds before a hang counts as a crash, and the memory cap (allocation bombs).
TIMEOUT=${TIMEOUT:-10}
RSS_MB=${RSS_MB:-2048}
export RUSTC_BOOTSTRAP=1 # libFuzzer needs unstable flags; works with the stable toolchain
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -a || exit 1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
log_dir=target/logs
mkdir -p "$log_dir"
failed=0
printf '%-14s %12s %10s %8s %8s %s\n' target executions exec/s new rss_mb result
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t" "artifacts/$t"
    log="$log_dir/$t.log"
    cargo fuzz run -a "$t" "target/corpus/$t" "corpus/$t" -- \
        -runs="$RUNS" -max_total_time="$MAX_TIME" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    stat() { grep -o "stat::$1: *[0-9]*" "$log" | grep -o '[0-9]*$' | tail -1; }
    result=ok
    if [ $rc -ne 0 ]; then
        result="CRASH (see $log, input in fuzz/artifacts/$t/)"
        failed=1
    fi
    printf '%-14s %12s %10s %8s %8s %s\n' "$t" "$(stat number_of_executed_units)" \
        "$(stat average_exec_per_sec)" "$(stat new_units_added)" "$(stat peak_rss_mb)" "$result"
done
exit $failed
