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

missing=()
command -v restic >/dev/null || missing+=(restic)
command -v borg >/dev/null || missing+=(borgbackup)
[ -x /usr/bin/time ] || missing+=(time)
if ((${#missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x "$bin" ]; then
  cargo build --release -p xenvault
fi
bin=$(realpath "$bin")

mkdir -p "$dir"
dir=$(realpath "$dir")
image=$dir/disk.img
bytes=$(numfmt --from=iec "$size")

# The image: repeating 64 MiB groups of OS files from /usr (binaries, libraries, text),
# zeros (unused space), random data (compressed or encrypted files) and a copy of an
# earlier region (a cloned file). Generated once per size.
if [ ! -f "$image" ] || [ "$(stat -c %s "$image")" != "$bytes" ]; then
  echo "generating a $size mixed image at $image"
  python3 - "$image" "$bytes" <<'PY'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
MiB = 1 << 20
rng = random.Random(4)

def os_files():
    while True:
        for root, _, names in os.walk("/usr"):
            for name in sorted(names):
                p = os.path.join(root, name)
                try:
                    if os.path.isfile(p) and not os.path.islink(p):
                        with open(p, "rb") as f:
                            yield f.read(16 * MiB)
                except OSError:
                    pass

files = os_files()
with open(path, "wb") as out:
    out.truncate(size)
    at = 0
    while at < size:
        for kind, mib in (("os", 26), ("zero", 16), ("random", 12), ("copy", 10)):
            n = min(mib * MiB, size - at)
            if n <= 0:
                break
            out.seek(at)
            if kind == "os":
                left = n
                while left > 0:
                    data = next(files)[:left]
                    out.write(data)
                    left -= len(data)
            elif kind == "random":
                out.write(os.urandom(n))
            elif kind == "copy" and at > 64 * MiB:
                out.flush()
                src = rng.randrange(0, at - n) // 4096 * 4096
                with open(path, "rb") as f:
                    f.seek(src)
                    out.write(f.read(n))
            at += n
PY
fi

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

# run TOOL PHASE COMMAND...: times the command, records seconds, MB/s of the image, peak RSS.
run() {
  local tool=$1 phase=$2
  shift 2
  local stats=$dir/time.txt
  if ! /usr/bin/time -v -o "$stats" "$@" >"$dir/$tool-$phase.log" 2>&1; then
    echo "$tool $phase failed:" >&2
    tail -20 "$dir/$tool-$phase.log" >&2
    exit 1
  fi
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$stats")
  rss=$(awk -F': ' '/Maximum resident set size/ {print int($2 / 1024)}' "$stats")
  printf '%s\t%s\t%s\t%s\n' "$tool" "$phase" "$secs" "$rss" >>"$results"
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
