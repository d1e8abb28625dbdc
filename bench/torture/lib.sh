# Shared by the bench/torture/ scripts (and their CI short forms): source it, do not run it.
# Helpers to run the real `xenvault` binary against a repository, kill it at random
# moments, and check what must survive. Extend by writing a new script that sources this.

TT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export XENVAULT_PASSPHRASE=${XENVAULT_PASSPHRASE:-torture-passphrase}
export XENVAULT_TO_PASSPHRASE=${XENVAULT_TO_PASSPHRASE:-$XENVAULT_PASSPHRASE}

# The binary: $XENVAULT_BIN, else a release build (built if missing).
tt_bin() {
  if [ -n "${XENVAULT_BIN:-}" ]; then
    echo "$XENVAULT_BIN"
    return
  fi
  (cd "$TT_ROOT" && cargo build --quiet --release -p xenvault >&2) || return 1
  echo "$TT_ROOT/target/release/xenvault"
}

# xorshift-free random numbers: $RANDOM seeded from $TT_SEED (printed, so a run repeats).
tt_seed() {
  TT_SEED=${TT_SEED:-$((10#$(date +%s%N | cut -c10-18)))}
  RANDOM=$TT_SEED
  echo "seed $TT_SEED (TT_SEED=$TT_SEED repeats the choices)"
}

# tt_below N: a random number in [0, N).
tt_below() { echo $(((RANDOM * 32768 + RANDOM) % $1)); }

# tt_init REPO: a repository with small chunks and packs (many objects from a few MiB) and
# a cheap KDF (it runs at every command).
tt_init() {
  "$XV" init --repo "$1" --chunk-size 64K --pack-size 1M --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null 2>&1
}

# tt_mutate IMAGE MIB: overwrites one random MiB of IMAGE (MIB MiB long) with random bytes.
tt_mutate() {
  dd if=/dev/urandom of="$1" bs=1M count=1 seek="$(tt_below "$2")" conv=notrunc status=none
}

# tt_kill_at MICROS CMD...: runs CMD, sends SIGKILL after MICROS µs (if still running) and
# sets TT_STATUS to its exit status (137 when killed) and TT_OUT to its stdout.
tt_kill_at() {
  local micros=$1 out
  shift
  out=$(mktemp)
  "$@" >"$out" 2>>"$TT_WORK/stderr.log" &
  local pid=$!
  sleep "$(printf '%d.%06d' $((micros / 1000000)) $((micros % 1000000)))"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  TT_STATUS=$?
  TT_OUT=$(cat "$out")
  rm -f "$out"
}

# tt_verify REPO: verify must exit 0; prints the report and fails otherwise.
tt_verify() {
  local report status
  report=$("$XV" verify --repo "$1" --json 2>>"$TT_WORK/stderr.log")
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "verify of $1 exited $status: $report" >&2
    return 1
  fi
}

# tt_ids REPO: the restore point ids, one a line.
tt_ids() {
  "$XV" snapshots --repo "$1" --json | python3 -c 'import json,sys; [print(s["id"]) for s in json.load(sys.stdin)]'
}

# tt_tag REPO ID: the first tag of a restore point.
tt_tag() {
  "$XV" snapshots --repo "$1" --json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["id"] == sys.argv[1]:
        print((s.get("tags") or [""])[0])' "$2"
}

# tt_restores REPO ID SHA256: the restore point restores to bytes with that digest.
tt_restores() {
  local to="$TT_WORK/restore-check.img" got
  rm -f "$to"
  "$XV" restore-image "$2" --repo "$1" --to "$to" >/dev/null 2>>"$TT_WORK/stderr.log" || return 1
  got=$(sha256sum "$to" | cut -d' ' -f1)
  rm -f "$to"
  [ "$got" = "$3" ]
}

# tt_figure NAME VALUE: one line of figures (grep '^figure' collects them).
tt_figure() { echo "figure $1 $2"; }
