#!/usr/bin/env bash
# Restore speed. (a) Restore to a raw file of the same generated mixed image (see
# bench/lib.sh) from xenvault beside restic (and borg with --borg): wall time, MB/s of the
# image, peak RSS. (b) Time to list a directory inside a 100 GiB restore point: a sparse
# 100 GiB raw disk with a GPT and an ext4 holding a few thousand files, backed up with
# `xenvault backup-image`, then `xenvault files ls` (a fresh process each time: it opens
# the repository, reads the partition table, the file system and the directory).
#
# Usage: bench/restore-bench.sh [--size 4G] [--big 100G] [--dir DIR] [--bin PATH] [--borg] [--keep]
#   --size  mixed image size (default 4G; generated once and reused, as by repo-bench.sh)
#   --big   virtual size of the listing disk (default 100G; sparse, a few MiB on disk)
#   --dir   work directory (default /tmp/xenvault-bench)
#   --bin   xenvault binary (default target/release/xenvault, built if missing)
#   --borg  also time borg extract
#   --keep  keep repositories and restored files
# Restores go to a file (fsync'd by xenvault, not by restic) and to /dev/null (the tools'
# own read, verify and decompress speed).
# The image and the repositories stay in the page cache for every tool alike, so the
# figures compare the tools, not the disk.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

size=4G big=100G dir=/tmp/xenvault-bench bin=target/release/xenvault borg=0 keep=0
while (($#)); do
  case $1 in
    --size) size=$2; shift 2 ;;
    --big) big=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --borg) borg=1; shift ;;
    --keep) keep=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

bench_install_tools
[ -x "$bin" ] || cargo build --release -p xenvault
bin=$(realpath "$bin")
mkdir -p "$dir"
dir=$(realpath "$dir")
image=$dir/disk.img
bytes=$(numfmt --from=iec "$size")
results=$dir/restore-results.tsv
: >"$results"
export XENVAULT_PASSPHRASE=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
rm -rf "$dir"/rb-*

run() {
  timed "$results" "$dir/rb-$1-$2.log" "$@"
}

check_restored() {
  cmp -s "$image" "$1" || { echo "$2: restored image differs from the source" >&2; exit 1; }
  rm -f "$1"
}

# (a) restore throughput
make_mixed_image "$image" "$bytes"
"$bin" init --repo "$dir/rb-repo-xenvault" >/dev/null
run xenvault backup "$bin" backup-image "$image" --repo "$dir/rb-repo-xenvault" --source-id bench
restic -r "$dir/rb-repo-restic" init --repository-version 2 >/dev/null
run restic backup restic -r "$dir/rb-repo-restic" backup --quiet "$image"
if ((borg)); then
  borg init --encryption repokey-blake2 "$dir/rb-repo-borg" >/dev/null 2>&1
  run borg backup borg create --compression zstd,1 "$dir/rb-repo-borg::full" "$image"
fi

run xenvault restore "$bin" restore-image latest --repo "$dir/rb-repo-xenvault" --to "$dir/rb-restored.img"
check_restored "$dir/rb-restored.img" xenvault
mkdir -p "$dir/rb-restic"
run restic restore restic -r "$dir/rb-repo-restic" restore latest --target "$dir/rb-restic"
check_restored "$dir/rb-restic$image" restic
# The same restores into /dev/null: reading and verifying only, without the target disk.
run xenvault to-devnull "$bin" restore-image latest --repo "$dir/rb-repo-xenvault" --to /dev/null
run restic to-devnull sh -c "restic -r '$dir/rb-repo-restic' dump latest '$image' >/dev/null"
if ((borg)); then
  mkdir -p "$dir/rb-borg"
  run borg restore sh -c "cd '$dir/rb-borg' && borg extract '$dir/rb-repo-borg::full'"
  check_restored "$dir/rb-borg$image" borg
fi

# (b) listing a directory of a big restore point
bigimg=$dir/rb-big.img
tree=$dir/rb-tree
mkdir -p "$tree"
python3 - "$tree" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(12):
    path = os.path.join(root, f"dir{d:02d}", "sub")
    os.makedirs(path, exist_ok=True)
    for f in range(300):
        with open(os.path.join(root, f"dir{d:02d}", f"file{f:04d}.txt"), "w") as out:
            out.write(f"directory {d} file {f}\n" * (f % 50 + 1))
PY
truncate -s "$big" "$bigimg"
printf 'label: gpt\nstart=2048, type=L\n' | sfdisk -q "$bigimg"
read -r part_start part_sectors < <(sfdisk -d "$bigimg" | sed -n 's/.*start= *\([0-9]*\), size= *\([0-9]*\).*/\1 \2/p')
mke2fs -q -t ext4 -b 4096 -F -E "offset=$((part_start * 512)),lazy_itable_init=1,lazy_journal_init=1" \
  -d "$tree" "$bigimg" $((part_sectors / 8))
"$bin" init --repo "$dir/rb-repo-big" >/dev/null
run xenvault "backup-$big" "$bin" backup-image "$bigimg" --repo "$dir/rb-repo-big" --source-id big
listing=$dir/rb-ls.json
for i in 1 2 3; do
  run xenvault "ls-$i" sh -c "'$bin' files ls latest --repo '$dir/rb-repo-big' --disk 0 --partition p1 /dir07 --json >'$listing'"
done
entries=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$listing")
[ "$entries" -ge 300 ] || { echo "files ls listed $entries entries, expected 301" >&2; exit 1; }

echo
echo "(a) restore to raw of a $size ($bytes bytes) mixed image from encrypted repositories"
echo "    (xenvault AES-256-GCM + zstd, restic v2 repo); $(nproc) cores"
printf '%-9s %-12s %9s %10s %10s\n' tool phase seconds MB/s "peak MiB"
while IFS=$'\t' read -r tool phase secs rss; do
  case $phase in backup | restore | to-devnull) ;; *) continue ;; esac
  printf '%-9s %-12s %9.2f %10.0f %10s\n' "$tool" "$phase" "$secs" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN {print b / s / 1e6}')" "$rss"
done <"$results"
echo
echo "(b) $big sparse disk (GPT + ext4, $(find "$tree" -type f | wc -l) files; $(du -h "$bigimg" | cut -f1) allocated): list /dir07 ($entries entries)"
printf '%-9s %-12s %9s %10s\n' tool phase seconds "peak MiB"
while IFS=$'\t' read -r tool phase secs rss; do
  case $phase in backup | restore | to-devnull) continue ;; esac
  printf '%-9s %-12s %9.2f %10s\n' "$tool" "$phase" "$secs" "$rss"
done <"$results"

rm -rf "$bigimg" "$tree" "$listing"
((keep)) || rm -rf "$dir"/rb-*
