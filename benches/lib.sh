# Shared by the benchmark scripts: a release data server in a throwaway directory.
# Source it after `cd` to the repository root; it sets $dir, $server and $url.

cargo build --release -q -p lockstep -p lockstep-server
dir=$(mktemp -d)
chmod 755 "$dir" # nginx workers run as an unprivileged user
export LOCKSTEP_ADMIN_TOKEN=bench LOCKSTEP_LOG=warn

# start_server INTERVAL: starts `lockstep serve`, sets $server (pid) and $url.
start_server() {
  ./target/release/lockstep serve --db "$dir/db" --listen 127.0.0.1:0 --interval "$1" > "$dir/out" &
  server=$!
  for _ in $(seq 50); do
    url=$(sed -n 's/lockstep: listening on //p' "$dir/out")
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "data server did not start" >&2
  return 1
}

# load_keys N: imports N keys (32-byte keys, 64-byte values) into production.
load_keys() {
  python3 - "$dir/keys.csv" "$1" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write("key:%028d,value:%08d:%049d\n" % (i, 0, i))
PY
  ./target/release/lockstep --server "$url" import "$dir/keys.csv" > /dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- side-by-side measurement with wrk ---------------------------------------------------------
# A machine shared with other builds drifts by more than the differences we measure, so the
# scripts run their contenders interleaved (A B A B …) for $ROUNDS rounds after one unrecorded
# warm-up round, and report medians with their min–max and ratios taken round by round.
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
: > "$dir/samples"

# wrk tallies no 3xx as an error and cannot say whether a 304 was a 304, so every run counts
# each response's status in Lua and prints the totals.
cat > "$dir/status.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + n end
  end
  for code, n in pairs(total) do io.write(string.format("status %d %d\n", code, n)) end
  local e = summary.errors
  io.write(string.format("errors %d\n", e.connect + e.read + e.write + e.timeout))
end
LUA

# wrk_run NAME URL [HEADER]: one wrk run (2 threads, 64 connections) for $DURATION; appends
# "NAME requests/s MB/s errors code:count…" to $dir/samples. NAME "-" records nothing (warm-up).
wrk_run() {
  local name=$1 url=$2 out
  if [ $# -gt 2 ]; then
    out=$(wrk -t2 -c64 -d"$DURATION" -s "$dir/status.lua" -H "$3" "$url")
  else
    out=$(wrk -t2 -c64 -d"$DURATION" -s "$dir/status.lua" "$url")
  fi
  [ "$name" = - ] && return 0
  echo "$out" | awk -v name="$name" '
    /Requests\/sec/ { rps = $2 }
    /Transfer\/sec/ { v = $2; if (v ~ /GB/) { sub("GB", "", v); v *= 1024 }
                      else if (v ~ /MB/) { sub("MB", "", v) }
                      else if (v ~ /KB/) { sub("KB", "", v); v /= 1024 }
                      else { sub("B", "", v); v /= 1048576 }; mbs = v }
    /^errors / { errors = $2 }
    /^status / { codes = codes " " $2 ":" $3 }
    END { print name, rps, mbs, errors codes }' >> "$dir/samples"
}

declare -A contender_url contender_header
# contender NAME URL [HEADER]: names what `interleave` runs.
contender() {
  contender_url[$1]=$2
  contender_header[$1]=${3:-}
}

# interleave NAME…: a short warm-up run of each contender, then $ROUNDS rounds of all in turn.
interleave() {
  local name round warm=$DURATION
  run() { # the label to record under, the contender
    if [ -n "${contender_header[$2]}" ]; then
      wrk_run "$1" "${contender_url[$2]}" "${contender_header[$2]}"
    else
      wrk_run "$1" "${contender_url[$2]}"
    fi
  }
  DURATION=2s
  for name in "$@"; do run - "$name"; done
  DURATION=$warm
  for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS: $*" >&2
    for name in "$@"; do run "$name" "$name"; done
  done
}

# compare LABEL A B…: prints each contender's requests/s and MB/s (median, min–max), the
# status mix it received, and A's ratio to each of the others, taken round by round.
compare() {
  python3 - "$dir/samples" "$@" <<'PY'
import statistics, sys
samples, label, *names = sys.argv[1:]
runs = {}
for line in open(samples):
    name, rps, mbs, errors, *codes = line.split()
    runs.setdefault(name, []).append((float(rps), float(mbs), int(errors), codes))
def spread(xs, p=0):
    return f"{statistics.median(xs):,.{p}f} ({min(xs):,.{p}f}–{max(xs):,.{p}f})"
def mix(name):
    tally, errors = {}, 0
    for _, _, e, codes in runs[name]:
        errors += e
        for c in codes:
            code, n = c.split(":")
            tally[code] = tally.get(code, 0) + int(n)
    total = sum(tally.values())
    parts = [f"{code}: {n:,} ({100 * n / total:.2f}%)" for code, n in sorted(tally.items())]
    return ", ".join(parts) + f"; socket errors {errors}"
print(f"{label}; {len(runs[names[0]])} interleaved rounds, median (min–max):")
for name in names:
    r = runs[name]
    print(f"  {name:<22} {spread([x[0] for x in r])} req/s, {spread([x[1] for x in r], 1)} MB/s")
    print(f"  {'':<22} status mix: {mix(name)}")
a = runs[names[0]]
for name in names[1:]:
    print(f"  ratio {names[0]} / {name}: {spread([x[0] / y[0] for x, y in zip(a, runs[name])], 2)}")
PY
}

# The fair best static-file nginx: descriptors and metadata cached, sendfile, and connections
# kept alive for the whole run (nginx closes one after 1000 requests by default; our server
# never does).
NGINX_FAIR_HTTP='
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  open_file_cache_min_uses 1;
  open_file_cache_errors on;'
