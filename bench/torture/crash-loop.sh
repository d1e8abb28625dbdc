#!/usr/bin/env bash
# Crash loop: kill -9 at random moments of backup-image, forget --prune, prune, copy and
# restore-image, ITERATIONS times (default 50), on REPO (default a local directory; an
# s3:// URL works with the usual AWS_* variables) and a copy target COPY_REPO.
# After every kill, verify of both repositories must be clean; at the end every accepted
# restore point that no forget was allowed to remove still exists, and every restore point
# of both repositories restores to the exact bytes of the version it was taken from.
# Prints `figure NAME VALUE` lines; exits 1 when anything was lost or damaged.
set -u
cd "$(dirname "$0")"
source ./lib.sh

ITERATIONS=${ITERATIONS:-50}
KEEP=3
MIB=8
TT_WORK=$(mktemp -d /tmp/xv-torture.XXXXXX)
trap 'rm -rf "$TT_WORK"' EXIT
XV=$(tt_bin) || exit 1
REPO=${REPO:-$TT_WORK/repo}
COPY=${COPY_REPO:-$TT_WORK/copy}
tt_seed
tt_init "$REPO" && tt_init "$COPY" || exit 1

image=$TT_WORK/vm.img
head -c "${MIB}M" /dev/urandom >"$image"
declare -A digest      # tag → sha256 of the image it was taken from
declare -A protected   # accepted ids no forget may have removed
digest[v0]=$(sha256sum "$image" | cut -d' ' -f1)
started=$(date +%s%N)
first=$("$XV" backup-image "$image" --repo "$REPO" --source-id vm --tag v0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot"]["id"])') || exit 1
protected[$first]=1
# Kill moments spread over one backup (shorter commands are killed less often).
window=$((($(date +%s%N) - started) / 1000))

killed=0 accepted=1 failures=0
declare -A runs
for ((i = 1; i <= ITERATIONS; i++)); do
  delay=$(tt_below "$window")
  case $(tt_below 6) in
  0 | 1)
    op=backup-image
    tt_mutate "$image" "$MIB"
    digest[v$i]=$(sha256sum "$image" | cut -d' ' -f1)
    tt_kill_at "$delay" "$XV" backup-image "$image" --repo "$REPO" --source-id vm --tag "v$i" --json
    if [ "$TT_STATUS" -eq 0 ]; then
      id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["snapshot"]["id"])' "$TT_OUT")
      protected[$id]=1
      accepted=$((accepted + 1))
    fi
    ;;
  2)
    op=forget
    # The newest KEEP points survive this forget; older ones may go.
    newest=" $(tt_ids "$REPO" | tail -n "$KEEP" | tr '\n' ' ') "
    for id in "${!protected[@]}"; do
      [[ $newest == *" $id "* ]] || unset "protected[$id]"
    done
    tt_kill_at "$delay" "$XV" forget --repo "$REPO" --keep-last "$KEEP" --prune
    ;;
  3)
    op=prune
    tt_kill_at "$delay" "$XV" prune --repo "$REPO"
    ;;
  4)
    op=copy
    ids=($(tt_ids "$REPO"))
    tt_kill_at "$delay" "$XV" copy "${ids[$(tt_below ${#ids[@]})]}" --repo "$REPO" --to "$COPY"
    ;;
  5)
    op=restore-image
    ids=($(tt_ids "$REPO"))
    id=${ids[$(tt_below ${#ids[@]})]}
    tt_kill_at "$delay" "$XV" restore-image "$id" --repo "$REPO" --to "$TT_WORK/restored.img"
    # A restore that says it finished wrote the exact bytes.
    if [ "$TT_STATUS" -eq 0 ] && [ "$(sha256sum "$TT_WORK/restored.img" | cut -d' ' -f1)" != "${digest[$(tt_tag "$REPO" "$id")]}" ]; then
      echo "iteration $i: restore-image $id exited 0 with wrong bytes" >&2
      failures=$((failures + 1))
    fi
    rm -f "$TT_WORK/restored.img"
    ;;
  esac
  runs[$op]=$((${runs[$op]:-0} + 1))
  [ "$TT_STATUS" -eq 137 ] && killed=$((killed + 1))
  for r in "$REPO" "$COPY"; do
    tt_verify "$r" || { echo "iteration $i: after $op killed at ${delay}us" >&2; failures=$((failures + 1)); }
  done
done

lost=0 checked=0
present=" $(tt_ids "$REPO" | tr '\n' ' ') "
for id in "${!protected[@]}"; do
  [[ $present == *" $id "* ]] || { echo "accepted restore point $id is gone" >&2; lost=$((lost + 1)); }
done
for r in "$REPO" "$COPY"; do
  for id in $(tt_ids "$r"); do
    checked=$((checked + 1))
    tag=$(tt_tag "$r" "$id")
    tt_restores "$r" "$id" "${digest[$tag]}" || { echo "$r: $id ($tag) does not restore exactly" >&2; lost=$((lost + 1)); }
  done
done

tt_figure iterations "$ITERATIONS"
for op in "${!runs[@]}"; do tt_figure "runs_$op" "${runs[$op]}"; done
tt_figure killed "$killed"
tt_figure backups_accepted "$accepted"
tt_figure points_restored_exactly "$((checked - lost))/$checked"
tt_figure points_lost "$lost"
tt_figure verify_or_restore_failures "$failures"
[ "$lost" -eq 0 ] && [ "$failures" -eq 0 ]
