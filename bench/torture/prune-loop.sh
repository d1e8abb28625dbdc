#!/usr/bin/env bash
# The acceptance of issue 9, through the real binary: ROUNDS (default 100) backup-image
# runs one after another while `xenvault prune` runs in a loop on the same repository
# (REPO, default a local directory). Nothing is forgotten, so every committed restore
# point must restore to the exact image it was taken from, and verify must be clean.
# Prints `figure NAME VALUE` lines; exits 1 when a point is lost.
set -u
cd "$(dirname "$0")"
source ./lib.sh

ROUNDS=${ROUNDS:-100}
MIB=4
TT_WORK=$(mktemp -d /tmp/xv-torture.XXXXXX)
trap 'kill "$pruner" 2>/dev/null; [ -n "${TT_KEEP:-}" ] || rm -rf "$TT_WORK"' EXIT
XV=$(tt_bin) || exit 1
REPO=${REPO:-$TT_WORK/repo}
tt_seed
tt_init "$REPO" || exit 1

image=$TT_WORK/vm.img
head -c "${MIB}M" /dev/urandom >"$image"
touch "$TT_WORK/pruning"
(
  n=0
  while [ -e "$TT_WORK/pruning" ]; do
    "$XV" prune --repo "$REPO" --json >>"$TT_WORK/prunes.log" 2>>"$TT_WORK/stderr.log" || echo "prune failed" >&2
    n=$((n + 1))
  done
  echo "$n" >"$TT_WORK/prunes"
) &
pruner=$!

declare -A digest
failed=0
for ((i = 1; i <= ROUNDS; i++)); do
  tt_mutate "$image" "$MIB"
  out=$("$XV" backup-image "$image" --repo "$REPO" --source-id vm --tag "v$i" --json 2>>"$TT_WORK/stderr.log") || {
    failed=$((failed + 1))
    continue
  }
  id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["snapshot"]["id"])' "$out")
  digest[$id]=$(sha256sum "$image" | cut -d' ' -f1)
done
rm "$TT_WORK/pruning"
wait "$pruner"

lost=0
for id in "${!digest[@]}"; do
  tt_restores "$REPO" "$id" "${digest[$id]}" || { echo "restore point $id is lost" >&2; lost=$((lost + 1)); }
done
verify=ok
tt_verify "$REPO" || verify=damage

tt_figure rounds "$ROUNDS"
tt_figure prunes "$(cat "$TT_WORK/prunes")"
tt_figure backups_failed "$failed"
tt_figure points_committed "${#digest[@]}"
tt_figure points_lost "$lost"
tt_figure verify "$verify"
[ "$lost" -eq 0 ] && [ "$verify" = ok ]
