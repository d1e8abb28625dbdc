#!/usr/bin/env bash
# Image backup side by side: xenvault, restic and borg back up and restore the same
# generated disk image (OS-like files, zeros, random data, repeated blocks), then back up
# again after 1% of it changed. Prints wall time, throughput, peak memory (RSS, from
# /usr/bin/time -v) and repository size per tool.
#
# Usage: bench/repo-bench.sh [--size 4G] [--dir DIR] [--bin PATH] [--keep]
#   --size  image size (default 4G; the image is generated once and reused)
#   --dir   work directory (default /tmp/xenvault-bench)
#   --bin   xenvault binary (default target/release/xenvault, built if missing)
#   --keep  keep repositories and restored files
# The image stays in the page cache for every tool alike (4 GiB fits in RAM here), so the
# figures compare the tools, not the disk.
set -euo pipefail
cd "$(dirname "$0")/.."

size=4G dir=/tmp/xenvault-bench bin=target/release/xenvault keep=0
while (($#)); do
  case $1 in
    --size) size=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

source bench/lib.sh
bench_install_tools
if [ ! -x "$bin" ]; then
  cargo build --release -p xenvault
fi
bin=$(realpath "$bin")

mkdir -p "$dir"
dir=$(realpath "$dir")
image=$dir/disk.img
bytes=$(numfmt --from=iec "$size")

make_mixed_image "$image" "$bytes"

# Changes 1% of the image in scattered 64 KiB blocks (CBT granularity).
change_one_percent() {
  python3 - "$image" "$bytes" <<'PY'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
block = 64 << 10
count = size // 100 // block
rng = random.Random()
with open(path, "r+b") as f:
    for _ in range(count):
        f.seek(rng.randrange(0, size // block) * block)
        f.write(os.urandom(block))
PY
}

results=$dir/results.tsv
: >"$results"

# run TOOL PHASE COMMAND...: times the command, records seconds and peak RSS.
run() {
  timed "$results" "$dir/$1-$2.log" "$@"
}

repo_size() {
  printf '%s\t%s\t%s\n' "$1" "$2" "$(du -sb "$3" | cut -f1)" >>"$dir/sizes.tsv"
}

check_restored() {
  cmp -s "$image" "$1" || { echo "$2: restored image differs from the source" >&2; exit 1; }
  rm -f "$1"
}

: >"$dir/sizes.tsv"
export XENVAULT_PASSPHRASE=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
rm -rf "$dir"/repo-* "$dir"/restore-*

bench_round() {
  local round=$1
  run xenvault "backup-$round" "$bin" backup-image "$image" --repo "$dir/repo-xenvault" --source-id bench
  repo_size xenvault "$round" "$dir/repo-xenvault"
  run restic "backup-$round" restic -r "$dir/repo-restic" backup --quiet "$image"
  repo_size restic "$round" "$dir/repo-restic"
  run borg "backup-$round" borg create --compression zstd,1 "$dir/repo-borg::$round" "$image"
  repo_size borg "$round" "$dir/repo-borg"

  run xenvault "restore-$round" "$bin" restore-image latest --repo "$dir/repo-xenvault" --to "$dir/restore-xenvault.img"
  check_restored "$dir/restore-xenvault.img" xenvault
  mkdir -p "$dir/restore-restic" "$dir/restore-borg"
  run restic "restore-$round" restic -r "$dir/repo-restic" restore latest --target "$dir/restore-restic"
  check_restored "$dir/restore-restic$image" restic
  run borg "restore-$round" sh -c "cd '$dir/restore-borg' && borg extract '$dir/repo-borg::$round'"
  check_restored "$dir/restore-borg$image" borg
}

"$bin" init --repo "$dir/repo-xenvault" >/dev/null
restic -r "$dir/repo-restic" init --repository-version 2 >/dev/null
borg init --encryption repokey-blake2 "$dir/repo-borg" >/dev/null 2>&1
bench_round full
change_one_percent
bench_round incr1pct

echo
echo "image: $size ($bytes bytes) mixed; encrypted repositories (xenvault AES-256-GCM + zstd-1,"
echo "restic v2 repo (AES-256 + zstd auto), borg repokey-blake2 + zstd,1); $(nproc) cores"
printf '%-9s %-17s %9s %10s %10s %12s\n' tool phase seconds MB/s "peak MiB" "repo MiB"
while IFS=$'\t' read -r tool phase secs rss; do
  round=${phase#*-}
  size_col=""
  [[ $phase == backup-* ]] && size_col=$(awk -F'\t' -v t="$tool" -v r="$round" '$1 == t && $2 == r {printf "%.0f", $3 / 1048576}' "$dir/sizes.tsv")
  printf '%-9s %-17s %9.1f %10.0f %10s %12s\n' "$tool" "$phase" "$secs" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN {print b / s / 1e6}')" "$rss" "$size_col"
done <"$results"

((keep)) || rm -rf "$dir"/repo-* "$dir"/restore-*
