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
# scripts run their contenders interleaved for $ROUNDS rounds after one unrecorded warm-up
# round, in alternating order (A B C, then C B A, …) so that no contender always follows the
# same one, and report medians with their min–max and ratios taken round by round.
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
STATUS_DURATION=${STATUS_DURATION:-2s}
: > "$dir/samples"
: > "$dir/statuses"
: > "$dir/answered"

# The timed runs are plain wrk, with no `response()` in Lua: defining one makes wrk parse every
# response's headers and buffer its body, which for 1 MB downloads makes wrk the bottleneck of
# both contenders. wrk counts no 3xx as an error and cannot tell a 304 from a 200, so after the
# rounds each contender gets one short run of its own with this script, which counts each
# response's status (where the server can count its answers itself, the scripts check those
# counts too).
cat > "$dir/status.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
local request_init = init -- the init of the request() script this one may follow
function init(args)
  statuses = {}
  if request_init then request_init(args) end
end
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

# wrk_run NAME URL HEADER SCRIPT: one plain wrk run (2 threads, 64 connections) for $DURATION,
# with the Lua SCRIPT if not empty (a `request()` that varies the request, never a
# `response()`); appends "NAME requests/s MB/s requests socket-errors non-2xx/3xx wrk-cpu" to
# $dir/samples, wrk-cpu being wrk's user+system CPU time over the wall time (1.0 = one core).
# NAME "-" records nothing (warm-up).
wrk_run() {
  local name=$1 url=$2 header=$3 script=$4 out cpu
  local args=(-t2 -c64 -d"$DURATION")
  [ -n "$header" ] && args+=(-H "$header")
  [ -n "$script" ] && args+=(-s "$script")
  out=$( { TIMEFORMAT='wrk-cpu %R %U %S'; time wrk "${args[@]}" "$url"; } 2>&1 )
  echo "$url $(echo "$out" | awk '/ requests in / { print $1 }')" >> "$dir/answered"
  [ "$name" = - ] && return 0
  echo "$out" | awk -v name="$name" '
    / requests in / { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    /Transfer\/sec/ { v = $2; if (v ~ /GB/) { sub("GB", "", v); v *= 1024 }
                      else if (v ~ /MB/) { sub("MB", "", v) }
                      else if (v ~ /KB/) { sub("KB", "", v); v /= 1024 }
                      else { sub("B", "", v); v /= 1048576 }; mbs = v }
    /Socket errors:/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { bad = $5 }
    /^wrk-cpu / { cpu = ($3 + $4) / $2 }
    END { print name, rps, mbs, requests, errors + 0, bad + 0, cpu }' >> "$dir/samples"
}

# status_run NAME URL HEADER SCRIPT: a short run for $STATUS_DURATION with the status-counting
# script (after SCRIPT's `request()`, if any); appends "NAME code:count… errors:N" to
# $dir/statuses.
status_run() {
  local name=$1 url=$2 header=$3 script=$4 lua="$dir/status-$1.lua" out
  { [ -n "$script" ] && cat "$script"; cat "$dir/status.lua"; } > "$lua"
  local args=(-t2 -c64 -d"$STATUS_DURATION" -s "$lua")
  [ -n "$header" ] && args+=(-H "$header")
  out=$(wrk "${args[@]}" "$url")
  echo "$url $(echo "$out" | awk '/ requests in / { print $1 }')" >> "$dir/answered"
  echo "$out" | awk -v name="$name" '
    /^status / { codes = codes " " $2 ":" $3 }
    /^errors / { errors = $2 }
    END { print name codes, "errors:" errors }' >> "$dir/statuses"
}

declare -A contender_url contender_header contender_script
# contender NAME URL [HEADER [SCRIPT]]: names what `interleave` runs.
contender() {
  contender_url[$1]=$2
  contender_header[$1]=${3:-}
  contender_script[$1]=${4:-}
}

# interleave NAME…: a short warm-up run of each contender, then $ROUNDS rounds of all in turn,
# the order reversed every other round; then one status-counting run of each.
interleave() {
  local name round warm=$DURATION order
  run() { # the label to record under, the contender
    wrk_run "$1" "${contender_url[$2]}" "${contender_header[$2]}" "${contender_script[$2]}"
  }
  DURATION=2s
  for name in "$@"; do run - "$name"; done
  DURATION=$warm
  order=("$@")
  for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS: ${order[*]}" >&2
    for name in "${order[@]}"; do run "$name" "$name"; done
    order=($(printf '%s\n' "${order[@]}" | tac))
  done
  for name in "$@"; do
    status_run "$name" "${contender_url[$name]}" "${contender_header[$name]}" "${contender_script[$name]}"
  done
}

# compare LABEL A B…: prints each contender's requests/s and MB/s (median, min–max), wrk's CPU,
# socket errors and non-2xx/3xx answers over the timed runs, the status mix of its
# status-counting run, and A's ratio to each of the others, taken round by round.
compare() {
  python3 - "$dir/samples" "$dir/statuses" "$@" <<'PY'
import statistics, sys
samples, statuses, label, *names = sys.argv[1:]
runs, mixes = {}, {}
for line in open(samples):
    name, rps, mbs, requests, errors, bad, cpu = line.split()
    runs.setdefault(name, []).append((float(rps), float(mbs), int(requests), int(errors), int(bad), float(cpu)))
for line in open(statuses):
    name, *codes = line.split()
    mixes[name] = codes
def spread(xs, p=0):
    return f"{statistics.median(xs):,.{p}f} ({min(xs):,.{p}f}–{max(xs):,.{p}f})"
def mix(name):
    tally, errors = {}, "?"
    for c in mixes.get(name, []):
        code, n = c.split(":")
        if code == "errors":
            errors = n
        else:
            tally[code] = tally.get(code, 0) + int(n)
    total = sum(tally.values()) or 1
    parts = [f"{code}: {n:,} ({100 * n / total:.2f}%)" for code, n in sorted(tally.items())]
    return ", ".join(parts) + f"; socket errors {errors}"
print(f"{label}; {len(runs[names[0]])} interleaved rounds, median (min–max):")
for name in names:
    r = runs[name]
    print(f"  {name:<22} {spread([x[0] for x in r])} req/s, {spread([x[1] for x in r], 1)} MB/s; "
          f"wrk used {spread([x[5] for x in r], 2)} cores of 2")
    print(f"  {'':<22} timed runs: {sum(x[2] for x in r):,} responses, socket errors "
          f"{sum(x[3] for x in r)}, non-2xx/3xx {sum(x[4] for x in r)}")
    print(f"  {'':<22} status-counting run: {mix(name)}")
a = runs[names[0]]
for name in names[1:]:
    print(f"  ratio {names[0]} / {name}: {spread([x[0] / y[0] for x, y in zip(a, runs[name])], 2)}")
PY
}

# answered URL: every response wrk counted from URL, in every run (warm-up, timed, status).
answered() {
  awk -v url="$1" '$1 == url { n += $2 } END { print n + 0 }' "$dir/answered"
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
