#!/usr/bin/env bash
# xenvault beside restic and borg on one realistic disk image, with `cat` (reading the
# image) and `zstd -1 -T0` (compressing it) as limits: the table of issue 16.
#
# The image: a GPT disk with one ext4 partition filled to 60% with real files (a copy of
# files from this machine's /usr, made with `mke2fs -d`), generated once and reused. The
# dedup row: 10 clones of the image, each with 1% of its size rewritten with random data
# in runs of 64 KiB to 1 MiB at random 4 KiB-aligned offsets of the partition (files a
# guest wrote), backed up one after the other into each tool's repository; the ratio is
# the repository size over (size after the image alone + the unique bytes).
#
# Usage: bench/compare.sh [--size 4G] [--dir DIR] [--bin PATH] [--rounds N] [--restore-dir DIR]
#                         [--clones N] [--image-only] [--keep]
#   --size         image size (default 4G)
#   --dir          work directory (default /tmp/xenvault-compare)
#   --bin          xenvault binary (default target/release/xenvault, built if missing)
#   --rounds       interleaved repetitions of the backup and restore rows (default 2)
#   --restore-dir  where restores to a file go (default /dev/shm: tmpfs, so the figure is
#                  the tool's, not the disk's)
#   --clones       clones for the dedup row (default 10; 0 skips it)
#   --image-only   generate the image and stop
#   --keep         keep repositories
# Each row shows the range over the rounds; ratios divide medians. The machine's load
# varies, so compare the ratios rather than the absolute seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

size=4G dir=/tmp/xenvault-compare bin=target/release/xenvault rounds=2 restore_dir=/dev/shm clones=10
image_only=0 keep=0
while (($#)); do
  case $1 in
    --size) size=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --restore-dir) restore_dir=$2; shift 2 ;;
    --clones) clones=$2; shift 2 ;;
    --image-only) image_only=1; shift ;;
    --keep) keep=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$dir"
dir=$(realpath "$dir")
image=$dir/disk.img
bytes=$(numfmt --from=iec "$size")

# make_realistic_image PATH BYTES: GPT + one ext4 partition, 60% full of files from /usr.
make_realistic_image() {
  local path=$1 total=$2 tree=$dir/tree start sectors
  [ -f "$path" ] && [ "$(stat -c %s "$path")" = "$total" ] && return 0
  echo "generating a $total-byte GPT + ext4 image at $path (60% full of files from /usr)"
  rm -f "$path"
  truncate -s "$total" "$path"
  printf 'label: gpt\nstart=2048, type=L\n' | sfdisk -q "$path"
  read -r start sectors < <(sfdisk -d "$path" | sed -n 's/.*start= *\([0-9]*\), size= *\([0-9]*\).*/\1 \2/p')
  rm -rf "$tree"
  # Hard links where /usr shares the file system, copies elsewhere; until 60% of the partition.
  python3 - "$tree" $((sectors * 512 * 60 / 100)) <<'PY'
import os, shutil, sys
tree, budget = sys.argv[1], int(sys.argv[2])
used = 0
for root, dirs, names in os.walk("/usr"):
    dirs.sort()
    for name in sorted(names):
        src = os.path.join(root, name)
        if os.path.islink(src) or not os.path.isfile(src):
            continue
        size = (os.path.getsize(src) + 4095) // 4096 * 4096 + 4096
        if used + size > budget:
            continue
        dst = os.path.join(tree, os.path.relpath(src, "/usr"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            try:
                shutil.copyfile(src, dst)
            except OSError:
                continue
        used += size
    if used > budget - (1 << 20):
        break
print(f"{used >> 20} MiB of files")
PY
  mke2fs -q -t ext4 -b 4096 -F -E "offset=$((start * 512))" -d "$tree" "$path" $((sectors / 8))
  rm -rf "$tree"
  # Not sparse: a disk read from a pool has its free space as zeros, not as file holes.
  cp --sparse=never "$path" "$path.full"
  mv "$path.full" "$path"
}

make_realistic_image "$image" "$bytes"
((image_only)) && exit 0

bench_install_tools
command -v zstd >/dev/null || { echo "zstd is needed for the limit row" >&2; exit 1; }
[ -x "$bin" ] || cargo build --release -p xenvault
bin=$(realpath "$bin")
mkdir -p "$restore_dir"
restored=$(realpath "$restore_dir")/xenvault-compare-restored.img

results=$dir/results.tsv
: >"$results"
export XENVAULT_PASSPHRASE=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

run() {
  timed "$results" "$dir/$1-$2.log" "$@"
}

check_restored() {
  cmp -s "$image" "$1" || { echo "$2: restored image differs from the source" >&2; exit 1; }
  rm -f "$1"
}

fresh_repos() {
  rm -rf "$dir"/repo-*
  "$bin" init --repo "$dir/repo-xenvault" >/dev/null
  restic -r "$dir/repo-restic" init --repository-version 2 >/dev/null
  borg init --encryption repokey-blake2 "$dir/repo-borg" >/dev/null 2>&1
}

# Interleaved: every round runs each tool once, so a load change hits them alike.
for round in $(seq "$rounds"); do
  fresh_repos
  run cat backup sh -c "cat '$image' >/dev/null"
  run zstd backup sh -c "zstd -1 -T0 -q -c '$image' >/dev/null"
  run xenvault backup "$bin" backup-image "$image" --repo "$dir/repo-xenvault" --source-id bench
  run restic backup restic -r "$dir/repo-restic" backup --quiet "$image"
  run borg backup borg create --compression zstd,1 "$dir/repo-borg::base" "$image"

  run xenvault restore-file "$bin" restore-image latest --repo "$dir/repo-xenvault" --to "$restored"
  check_restored "$restored" xenvault
  run restic restore-file sh -c "restic -r '$dir/repo-restic' dump latest '$image' >'$restored'"
  check_restored "$restored" restic
  run borg restore-file sh -c "borg extract --stdout '$dir/repo-borg::base' >'$restored'"
  check_restored "$restored" borg

  run xenvault restore-null "$bin" restore-image latest --repo "$dir/repo-xenvault" --to /dev/null
  run restic restore-null sh -c "restic -r '$dir/repo-restic' dump latest '$image' >/dev/null"
  run borg restore-null sh -c "borg extract --stdout '$dir/repo-borg::base' >/dev/null"
done

# Dedup: the repositories of the last round hold the image; add the clones.
sizes=$dir/sizes.tsv
: >"$sizes"
for tool in xenvault restic borg; do
  printf '%s\tbase\t%s\n' "$tool" "$(du -sb "$dir/repo-$tool" | cut -f1)" >>"$sizes"
done
unique=0
if ((clones)); then
  clone=$dir/clone.img
  cp --sparse=always "$image" "$clone"
  read -r part_start part_sectors < <(sfdisk -d "$image" | sed -n 's/.*start= *\([0-9]*\), size= *\([0-9]*\).*/\1 \2/p')
  for i in $(seq "$clones"); do
    # Rewrites 1% of the clone with random data; prints the bytes written.
    written=$(python3 - "$image" "$clone" "$i" $((part_start * 512)) $((part_sectors * 512)) <<'PY'
import os, random, sys
image, clone, seed, start, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
target = os.path.getsize(image) // 100
done = 0
with open(image, "rb") as base, open(clone, "r+b") as out:
    # Back to the image first: each clone differs from it by its own 1% only.
    for at in range(0, os.path.getsize(image), 64 << 20):
        base.seek(at)
        out.seek(at)
        out.write(base.read(64 << 20))
    while done < target:
        run = min(rng.randrange(64 << 10, (1 << 20) + 1, 4096), target - done)
        out.seek(start + rng.randrange(0, (length - run) // 4096) * 4096)
        out.write(os.urandom(run))
        done += run
print(done)
PY
)
    unique=$((unique + written))
    run xenvault "clone-$i" "$bin" backup-image "$clone" --repo "$dir/repo-xenvault" --source-id "clone-$i"
    run restic "clone-$i" restic -r "$dir/repo-restic" backup --quiet "$clone"
    run borg "clone-$i" borg create --compression zstd,1 "$dir/repo-borg::clone-$i" "$clone"
  done
  rm -f "$clone"
  for tool in xenvault restic borg; do
    printf '%s\tclones\t%s\n' "$tool" "$(du -sb "$dir/repo-$tool" | cut -f1)" >>"$sizes"
  done
fi

# The table: seconds (min-max over rounds), MB/s of the image at the median, and ratios.
python3 - "$results" "$sizes" "$bytes" "$unique" "$clones" "$rounds" <<'PY'
import statistics, sys
results, sizes, image_bytes, unique, clones, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
times, rss = {}, {}
for line in open(results):
    tool, phase, secs, peak = line.rstrip("\n").split("\t")
    times.setdefault((tool, phase), []).append(float(secs))
    if not phase.startswith("clone"):
        rss.setdefault(tool, []).append(int(peak))
size = {}
for line in open(sizes):
    tool, what, b = line.rstrip("\n").split("\t")
    size[(tool, what)] = int(b)

def cell(tool, phase, reference=None):
    t = times.get((tool, phase))
    if not t:
        return ""
    med = statistics.median(t)
    text = f"{min(t):.1f}-{max(t):.1f} s ({image_bytes / med / 1e6:.0f} MB/s)" if len(t) > 1 else f"{t[0]:.1f} s ({image_bytes / med / 1e6:.0f} MB/s)"
    if reference:
        text += f", {med / statistics.median(times[reference]):.2f}x"
    return text

tools = ["xenvault", "restic", "borg"]
rows = [
    ("full backup of the image (x: vs xenvault)", [cell("xenvault", "backup", ("zstd", "backup"))] + [cell(t, "backup", ("xenvault", "backup")) for t in tools[1:]]),
    ("`zstd -1 -T0` alone on the image (limit)", [cell("zstd", "backup"), "", ""]),
    ("`cat` of the image (read limit)", [cell("cat", "backup"), "", ""]),
    ("restore to a file (tmpfs)", [cell(t, "restore-file", None if t == "xenvault" else ("xenvault", "restore-file")) for t in tools]),
    ("restore to /dev/null", [cell(t, "restore-null", None if t == "xenvault" else ("xenvault", "restore-null")) for t in tools]),
]
if clones:
    dedup = []
    for t in tools:
        total, base = size[(t, "clones")], size[(t, "base")]
        dedup.append(f"{total / 1e9:.2f} GB ({total / (base + unique):.2f}x base+unique)")
    rows.append((f"repository after {clones} clones (1% unique each)", dedup))
rows.append(("peak RSS", [f"{min(rss[t]) // 1 if False else min(rss[t])}-{max(rss[t])} MiB" for t in tools]))
print()
print(f"image: {image_bytes} bytes, GPT + ext4 60% full of /usr files; {rounds} interleaved rounds; "
      f"first column's ratio is against zstd, the others' against xenvault")
if clones:
    print(f"base repositories: " + ", ".join(f"{t} {size[(t, 'base')] / 1e9:.2f} GB" for t in tools) + f"; unique bytes {unique / 1e9:.2f} GB")
print(f"| | {' | '.join(tools)} |")
print("|---|---|---|---|")
for name, cells in rows:
    print(f"| {name} | {' | '.join(cells)} |")
PY

((keep)) || rm -rf "$dir"/repo-*
