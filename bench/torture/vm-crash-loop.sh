#!/usr/bin/env bash
# VM backup crash loop: kill -9 at random moments of `xenvault backup` (default CBT
# incrementals and, one time in four, --level full) against a standalone simulator,
# ITERATIONS times (default 50). Between runs the guest writes to its disks. Checks:
# verify is clean after every kill; a last, unkilled run succeeds and leaves exactly one
# snapshot of ours (the base) and no VM lock on the pool; every accepted restore point
# restores (export --format raw) to the simulator's sha256 of the disk at backup time.
# Prints `figure NAME VALUE` lines; exits 1 when anything was lost, damaged or left.
set -u
cd "$(dirname "$0")"
source ./lib.sh

ITERATIONS=${ITERATIONS:-50}
DISK_MIB=${DISK_MIB:-16}
VM=debian-web
TT_WORK=$(mktemp -d /tmp/xv-vm-torture.XXXXXX)
XV=$(tt_bin) || exit 1
export XENVAULT_CONFIG=$TT_WORK/config.toml XENVAULT_CACHE_DIR=$TT_WORK/cache
REPO=$TT_WORK/repo
tt_seed

# The simulator on a free loopback port, stopped at exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$XV" sim serve --state-dir "$TT_WORK/sim" --listen "127.0.0.1:$port" --nbd-port 0 --blank-disks-mib "$DISK_MIB" \
  >"$TT_WORK/sim.out" 2>"$TT_WORK/sim.log" &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null; wait $sim_pid 2>/dev/null; rm -rf "$TT_WORK"' EXIT
for _ in $(seq 100); do grep -q '^listening on ' "$TT_WORK/sim.out" 2>/dev/null && break; sleep 0.1; done
export XENVAULT_SIM_URL=$(sed -n 's/^listening on //p' "$TT_WORK/sim.out")
export XENVAULT_SIM_PASSWORD=xenvault
[ -n "$XENVAULT_SIM_URL" ] || { echo "the simulator did not start: $(cat "$TT_WORK/sim.log")" >&2; exit 1; }
echo "$XENVAULT_SIM_PASSWORD" >"$TT_WORK/pool.password"
"$XV" pool add sim --url "$XENVAULT_SIM_URL" --insecure --password-file "$TT_WORK/pool.password" >/dev/null || exit 1
tt_init "$REPO" || exit 1

# Our snapshots of the VM on the pool and its backup lock, as "snapshots=N untagged=N lock=0|1".
pool_state() {
  python3 - "$XENVAULT_SIM_URL" "$XENVAULT_SIM_PASSWORD" "$VM" <<'PY'
import ssl, sys, xmlrpc.client
url, password, vm_name = sys.argv[1:]
server = xmlrpc.client.ServerProxy(url, context=ssl._create_unverified_context())
session = server.session.login_with_password("root", password, "1.0", "torture")["Value"]
records = server.VM.get_all_records(session)["Value"].values()
ours = [r for r in records if r["is_a_snapshot"] and (r["other_config"].get("xenvault.snapshot") or r["name_label"].startswith("[xenvault]"))]
untagged = [r for r in ours if not r["other_config"].get("xenvault.snapshot")]
lock = any("xenvault.backup_lock" in r["other_config"] for r in records if r["name_label"] == vm_name)
print(f"snapshots={len(ours)} untagged={len(untagged)} lock={int(lock)}")
PY
}

# backup ARGS...: one run; sets TT_STATUS and TT_OUT (its JSON report) like tt_kill_at.
expected=$TT_WORK/expected   # lines "ID POSITION SHA256" of accepted restore points
digests=$TT_WORK/digests     # lines "POSITION VDI SHA256" of the disks now
snap_digests() {
  : >"$digests"
  for pair in $vdis; do
    echo "${pair%%=*} ${pair#*=} $("$XV" sim sha256 "${pair#*=}")" >>"$digests"
  done
}
accept() {
  local id
  id=$(python3 -c 'import json,sys; v=json.loads(sys.argv[1])["vms"][0]; print(v["restore_point"] if v["status"]=="ok" else "")' "$TT_OUT")
  [ -n "$id" ] || return 1
  while read -r position _ digest; do echo "$id $position $digest" >>"$expected"; done <"$digests"
}

started=$(date +%s%N)
TT_OUT=$("$XV" backup --pool sim --vm "$VM" --repo "$REPO" --json 2>>"$TT_WORK/stderr.log") || { echo "first backup failed" >&2; exit 1; }
full_ns=$(($(date +%s%N) - started))
vdis=$(python3 -c 'import json,sys; print(" ".join(d["position"]+"="+d["vdi_uuid"] for d in json.loads(sys.argv[1])["vms"][0]["disks"]))' "$TT_OUT")
snap_digests
accept || exit 1
# Kill moments spread over a little more than one full backup.
window=$((full_ns / 1000 * 3 / 2))

killed=0 accepted=1 failures=0 fulls=0 incs=0 inc_cbt=0 inc_disks=0
loop_started=$(date +%s%N)
for ((i = 1; i <= ITERATIONS; i++)); do
  for pair in $vdis; do "$XV" sim scribble "${pair#*=}" 2 --write-size 4096 --seed "$i" >/dev/null; done
  snap_digests
  level=inc
  [ "$(tt_below 4)" -eq 0 ] && level=full
  if [ $level = full ]; then fulls=$((fulls + 1)); else incs=$((incs + 1)); fi
  delay=$(tt_below "$window")
  tt_kill_at "$delay" "$XV" backup --pool sim --vm "$VM" --repo "$REPO" --level "$level" --json
  if [ "$TT_STATUS" -eq 137 ]; then
    killed=$((killed + 1))
  elif [ "$TT_STATUS" -eq 0 ] && accept; then
    accepted=$((accepted + 1))
    # CBT needs the base a killed run may not have tagged: other strategies are fallbacks.
    if [ $level = inc ]; then
      read -r cbt disks < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1])["vms"][0]["disks"]; print(sum(x["strategy"]=="cbt" for x in d), len(d))' "$TT_OUT")
      inc_cbt=$((inc_cbt + cbt)) inc_disks=$((inc_disks + disks))
    fi
  else
    echo "iteration $i: backup --level $level exited $TT_STATUS unkilled: $TT_OUT" >&2
    failures=$((failures + 1))
  fi
  tt_verify "$REPO" || { echo "iteration $i: verify failed after a $level backup killed at ${delay}us" >&2; failures=$((failures + 1)); }
done
loop_ns=$(($(date +%s%N) - loop_started))

# The next run cleans up what the kills left; then one base of ours remains, no lock.
TT_OUT=$("$XV" backup --pool sim --vm "$VM" --repo "$REPO" --json 2>>"$TT_WORK/stderr.log") && snap_digests && accept &&
  accepted=$((accepted + 1)) || { echo "the backup after the loop failed: $TT_OUT" >&2; failures=$((failures + 1)); }
state=$(pool_state)
[ "$state" = "snapshots=1 untagged=0 lock=0" ] || { echo "left on the pool after cleanup: $state" >&2; failures=$((failures + 1)); }
tt_verify "$REPO" || failures=$((failures + 1))

checked=0 lost=0
while read -r id position digest; do
  checked=$((checked + 1))
  "$XV" export "$id" --disk "$position" --format raw --to "$TT_WORK/disk.raw" --repo "$REPO" >/dev/null 2>>"$TT_WORK/stderr.log"
  got=$(sha256sum "$TT_WORK/disk.raw" 2>/dev/null | cut -d' ' -f1)
  rm -f "$TT_WORK/disk.raw"
  [ "$got" = "$digest" ] || { echo "restore point $id disk $position does not restore exactly" >&2; lost=$((lost + 1)); }
done <"$expected"

tt_figure iterations "$ITERATIONS"
tt_figure runs_inc "$incs"
tt_figure runs_full "$fulls"
tt_figure killed "$killed"
tt_figure backups_accepted "$accepted"
tt_figure accepted_incremental_disks_by_cbt "$inc_cbt/$inc_disks"
tt_figure disks_restored_exactly "$((checked - lost))/$checked"
tt_figure pool_after_cleanup "$state"
tt_figure failures "$failures"
tt_figure seconds_per_iteration "$(python3 -c "print(round($loop_ns / 1e9 / max($ITERATIONS, 1), 2))")"
[ "$lost" -eq 0 ] && [ "$failures" -eq 0 ]
