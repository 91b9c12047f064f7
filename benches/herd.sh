#!/usr/bin/env bash
# The data server at its busiest instant, on each backend, in one run:
#   1. check-ins per second: wrk, 3 threads and 96 connections, each check-in carrying the
#      query a real client sends (one of 64 web servers on 8 hosts, in turn; no If-None-Match,
#      so every answer is a 200 with the sync table); with 3 instances, each wrk thread talks to
#      one of them;
#   2. the boundary herd: CLIENTS (default 1000) check-ins over connections opened beforehand,
#      sent together 1 ms after the activation time T read from the sync table (one thread,
#      non-blocking sockets: benches/herd_client.rs), one edit having been made in the cycle
#      before so that the rotation at T stages a new version. Each check-in is timed from its
#      own send to the end of its answer: p50, p99 and max latency, the latency of the one that
#      rotated, and the number of rotations of T (answers saying `rotated`, and entries for T in
#      the rotation log), which must be 1.
# for SQLite (1 instance), PostgreSQL with 1 instance and PostgreSQL with 3 instances on one
# database (the herd and wrk's threads spread over the three), all running at once. For each
# dataset size in KEYS (default "1000 100000"; add 1000000 for 1M keys: about 115 MB per
# version) the three are measured interleaved, after a warm-up round that is not recorded, for
# ROUNDS rounds (default 5) in alternating order; the report gives medians (min–max).
# PostgreSQL is a throwaway cluster in the run's temporary directory (initdb and pg_ctl from
# Debian's postgresql package, as the postgres user when run as root), with fsync on, as
# SQLite's synchronous=FULL. INTERVAL (default 10s) is the cycle the herds come at; DURATION
# (default 5s) is each wrk run.
# CONTENDERS (default "sqlite-1 postgres-1 postgres-3") picks which of the three run; the
# report names them, since fewer servers leave more memory and cache to the rest.
# HERD_LOGS=FILE keeps the data servers' rotation and restage log lines (each rotation's time
# and whether its version was built ahead), which say why a rotating check-in was slow.
# Needs: scripts/bench-setup.sh (wrk), and Debian's postgresql package (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-"1000 100000"}
CLIENTS=${CLIENTS:-1000}
INTERVAL=${INTERVAL:-10s}
. benches/lib.sh
export LOCKSTEP_LOG=warn,lockstep::store=debug
ulimit -n "$(ulimit -Hn)"

herd_client=$(cargo bench -p lockstep --bench herd_client --no-run 2>&1 |
  sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
[ -x "$herd_client" ] || { echo "herd_client did not build" >&2; exit 1; }

pids=()
pg_ctl_as=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${HERD_LOGS:-}" ]; then
    grep -h "rotation:\|restaged\|built in" "$dir"/out.*.err > "$HERD_LOGS" 2>/dev/null || true
  fi
  [ ${#pg_ctl_as[@]} -gt 0 ] && "${pg_ctl_as[@]}" stop -m immediate > /dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT

# --- a throwaway PostgreSQL cluster ---------------------------------------------------------
bindir=$(pg_config --bindir 2>/dev/null || true)
[ -x "$bindir/initdb" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_owner=()
if [ "$(id -u)" = 0 ]; then as_owner=(runuser -u postgres --); fi
mkdir "$dir/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$dir/pg"
"${as_owner[@]}" "$bindir/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 > /dev/null
pg_port=$(free_port)
pg_ctl_as=("${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log")
"${pg_ctl_as[@]}" -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c max_connections=200" \
  start -w > /dev/null
psql_() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -At -v ON_ERROR_STOP=1 "$@"; }

# start_instance DB: a data server on DB; appends its URL to $urls.
start_instance() {
  local out="$dir/out.$RANDOM$RANDOM" u
  : > "$out" # before the server's shell opens it, so the first read below finds it
  ./target/release/lockstep serve --db "$1" --listen 127.0.0.1:0 --interval "$INTERVAL" \
    --max-body-bytes 1000000000 > "$out" 2> "$out.err" &
  pids+=($!)
  for _ in $(seq 100); do
    u=$(sed -n 's/lockstep: listening on //p' "$out")
    [ -n "$u" ] && { urls+=("$u"); return 0; }
    sleep 0.1
  done
  echo "data server on $1 did not start" >&2
  return 1
}

# ready URL: waits until the instance answers check-ins (it has opened its database).
ready() {
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/v1/checkin?name=bench")" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 never became ready" >&2
  return 1
}

# checkins_lua FILE URL...: a wrk script whose threads each talk to one of the URLs in turn.
checkins_lua() {
  local file=$1 hosts="" u
  shift
  for u in "$@"; do
    u=${u#http://}
    hosts+="{\"${u%:*}\", \"${u##*:}\"}, "
  done
  cat > "$file" <<LUA
local hosts, made = { $hosts}, 0
function setup(thread)
  local h = hosts[made % #hosts + 1]
  made = made + 1
  thread.addr = wrk.lookup(h[1], h[2])[1]
end
local requests, i = {}, 0
function init(args)
  for n = 0, 63 do
    requests[n + 1] = wrk.format(nil, string.format(
      "/v1/checkin?name=web-%d&host=host-%d&pid=%d&offset_us=%d&error_us=%d&lagging=0",
      n, n % 8, 20000 + n, (n * 7919) % 5000 - 2500, 300 + (n * 37) % 900))
  end
  i = math.random(#requests)
end
function request() i = i % #requests + 1; return requests[i] end
LUA
}

# checkins_per_s NAME: one wrk run against the contender; prints "rps non2xx errors".
checkins_per_s() {
  local name=$1 out
  out=$(wrk -t3 -c96 -d"$DURATION" -s "$dir/$name.lua" "${first_url[$name]}")
  echo "$out" | awk '
    /Requests\/sec/ { rps = $2 }
    /Socket errors:/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { bad = $5 }
    END { print rps, bad + 0, errors + 0 }'
}

# herd NAME: an edit, then CLIENTS check-ins at the next activation time; prints
# "p50_us p99_us max_us rotating_us rotated_answers log_entries_for_T sending_us statuses".
herd() {
  local name=$1 u t
  u=${first_url[$name]}
  # A probe performs any rotation that fell due while no one was checking in here.
  # The edit goes in well before T, as most do: the next version can be built ahead.
  while :; do
    read -r t ahead < <(curl -s "$u/v1/checkin?name=probe" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["activation_time_us"], s["activation_time_us"] - s["server_time_us"])')
    [ "$ahead" -gt 3000000 ] && break
    # (A rotation that outlasted the cycle leaves a time already past: wait a little.)
    sleep "$(python3 -c "print(max($ahead, 0) / 1e6 + 0.2)")"
  done
  ./target/release/lockstep --server "$u" put "herd-edit" "$name-$t" > /dev/null
  # shellcheck disable=SC2086
  "$herd_client" "$t" "$CLIENTS" ${all_urls[$name]} > "$dir/herd.json"
  curl -s -H "Authorization: Bearer $LOCKSTEP_ADMIN_TOKEN" "$u/v1/admin/rotations" > "$dir/log.json"
  python3 - "$dir/herd.json" "$dir/log.json" "$t" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
log = json.load(open(sys.argv[2]))
t = int(sys.argv[3])
lat = h["latencies_us"]
def pct(p): return lat[min(len(lat) - 1, int(p * len(lat)))]
rotating = max(h["rotating_us"]) if h["rotating_us"] else -1
in_log = sum(1 for r in log if r["activation_time_us"] == t)
statuses = ",".join(f"{k}:{v}" for k, v in sorted(h["statuses"].items()))
print(pct(0.5), pct(0.99), lat[-1], rotating, h["rotated"], in_log, h["sending_us"], statuses)
PY
}

: > "$dir/herd.samples"
declare -A first_url all_urls
for keys in $KEYS; do
  echo "== $keys keys" >&2
  pids_before=${#pids[@]}
  python3 - "$dir/keys.csv" "$keys" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write("key:%028d,value:%08d:%049d\n" % (i, 0, i))
PY
  rm -f "$dir"/keys.part.*
  split -l 100000 -d -a 3 "$dir/keys.csv" "$dir/keys.part."
  psql_ -d postgres -c "CREATE DATABASE pg1_$keys" -c "CREATE DATABASE pg3_$keys" > /dev/null
  declare -A dbs=(
    [sqlite-1]="$dir/sqlite-$keys.db"
    [postgres-1]="postgres://postgres@127.0.0.1:$pg_port/pg1_$keys"
    [postgres-3]="postgres://postgres@127.0.0.1:$pg_port/pg3_$keys"
  )
  declare -A instances=([sqlite-1]=1 [postgres-1]=1 [postgres-3]=3)
  read -r -a names <<< "${CONTENDERS:-sqlite-1 postgres-1 postgres-3}"
  for name in "${names[@]}"; do
    urls=()
    for _ in $(seq "${instances[$name]}"); do start_instance "${dbs[$name]}"; done
    for u in "${urls[@]}"; do ready "$u"; done
    first_url[$name]=${urls[0]}
    all_urls[$name]="${urls[*]}"
    checkins_lua "$dir/$name.lua" "${urls[@]}"
    # In parts of 100k keys: one import of 1M keys takes longer than the CLI's timeout.
    for part in "$dir"/keys.part.*; do
      ./target/release/lockstep --server "${urls[0]}" import "$part" > /dev/null
    done
  done
  # Warm-up: each contender once, unrecorded (the imported keys get staged and activated).
  for name in "${names[@]}"; do
    herd "$name" > /dev/null
    DURATION=2s checkins_per_s "$name" > /dev/null
  done
  order=("${names[@]}")
  for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS: ${order[*]}" >&2
    for name in "${order[@]}"; do
      echo "$keys $name $round checkins $(checkins_per_s "$name")" >> "$dir/herd.samples"
      echo "$keys $name $round herd $(herd "$name")" >> "$dir/herd.samples"
    done
    order=($(printf '%s\n' "${order[@]}" | tac))
  done
  for p in "${pids[@]:$pids_before}"; do kill "$p" 2>/dev/null || true; done
  unset dbs instances
done

python3 - "$dir/herd.samples" "$CLIENTS" "$INTERVAL" "${CONTENDERS:-sqlite-1 postgres-1 postgres-3}" <<'PY'
import statistics, sys
samples, clients, interval, contenders = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"contenders running side by side: {contenders}")
rps, herds = {}, {}
for line in open(samples):
    keys, name, rnd, kind, *rest = line.split()
    if kind == "checkins":
        rps.setdefault((int(keys), name), []).append((float(rest[0]), int(rest[1]), int(rest[2])))
    else:
        herds.setdefault((int(keys), name), []).append(rest)
def spread(xs, scale=1.0, p=1):
    xs = [x * scale for x in xs]
    return f"{statistics.median(xs):,.{p}f} ({min(xs):,.{p}f}–{max(xs):,.{p}f})"
for keys in sorted({k for k, _ in rps}):
    n = len(next(v for (k, _), v in herds.items() if k == keys))
    print(f"{keys:,} keys; {n} interleaved rounds, median (min–max); herd of {clients} check-ins "
          f"at each activation time, interval {interval}:")
    for name in ("sqlite-1", "postgres-1", "postgres-3"):
        r, h = rps.get((keys, name), []), herds.get((keys, name), [])
        if not r:
            continue
        print(f"  {name:<11} check-ins/s {spread([x[0] for x in r], p=0)}; non-2xx {sum(x[1] for x in r)}, "
              f"socket errors {sum(x[2] for x in r)}")
        p50, p99, mx, rot = ([int(x[i]) for x in h] for i in range(4))
        rotated = [int(x[4]) for x in h]
        logged = [int(x[5]) for x in h]
        sending = [int(x[6]) for x in h]
        statuses = sorted({x[7] for x in h})
        print(f"  {'':<11} herd p50 {spread(p50, 1e-3)} ms, p99 {spread(p99, 1e-3)} ms, "
              f"max {spread(mx, 1e-3)} ms; the rotating check-in {spread(rot, 1e-3)} ms")
        print(f"  {'':<11} rotations per activation time: answers saying rotated {rotated}, "
              f"rotation-log entries {logged} (must be 1 each); sending the herd took "
              f"{spread(sending, 1e-3)} ms; statuses {' '.join(statuses)}")
PY
