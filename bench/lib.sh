# Shared by the bench/ scripts: source it, do not run it.

# Installs what the benchmarks run beside xenvault when it is missing.
bench_install_tools() {
  local missing=()
  command -v restic >/dev/null || missing+=(restic)
  command -v borg >/dev/null || missing+=(borgbackup)
  [ -x /usr/bin/time ] || missing+=(time)
  ((${#missing[@]})) || return 0
  local sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# make_mixed_image PATH BYTES: repeating 64 MiB groups of OS files from /usr (binaries,
# libraries, text), zeros (unused space), random data (compressed or encrypted files) and a
# copy of an earlier region (a cloned file). Generated once per size, then reused.
make_mixed_image() {
  local image=$1 bytes=$2
  [ -f "$image" ] && [ "$(stat -c %s "$image")" = "$bytes" ] && return 0
  echo "generating a $bytes-byte mixed image at $image"
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
}

# timed RESULTS LOG TOOL PHASE COMMAND...: runs the command (output to LOG), appends
# "tool phase seconds peak-RSS-MiB" to RESULTS; on failure shows the log and exits.
timed() {
  local results=$1 log=$2 tool=$3 phase=$4
  shift 4
  local stats=$log.time
  if ! /usr/bin/time -v -o "$stats" "$@" >"$log" 2>&1; then
    echo "$tool $phase failed:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$stats")
  rss=$(awk -F': ' '/Maximum resident set size/ {print int($2 / 1024)}' "$stats")
  printf '%s\t%s\t%s\t%s\n' "$tool" "$phase" "$secs" "$rss" >>"$results"
}

# bench_server DIR: starts the built `xenvault server` on a free loopback port (catalog in
# DIR/data, log in DIR/server.log) and sets server_pid (set it in an EXIT trap first),
# server_url and token, an admin API token made through the web login (session cookie +
# CSRF token).
bench_server() {
  local dir=$1 port password csrf
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  server_url="https://127.0.0.1:$port"
  password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
  mkdir -p "$dir/data"
  XENVAULT_ADMIN_PASSWORD=$password target/debug/xenvault server --config /dev/null \
    --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    curl -ksf "$server_url/api/openapi.json" -o /dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    sleep 0.2
  done
  csrf=$(curl -ksf -c "$dir/cookies" -H 'content-type: application/json' \
    -d "{\"user\": \"admin\", \"password\": \"$password\"}" "$server_url/api/auth/login" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["csrf_token"])')
  token=$(curl -ksf -b "$dir/cookies" -H 'content-type: application/json' -H "x-csrf-token: $csrf" \
    -d '{"name": "bench", "role": "admin"}' "$server_url/api/tokens" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')
}
