#!/usr/bin/env bash
# Delta transfer against full downloads, side by side in one run: KEYS keys (default 1M; 32-byte
# keys, price-like random values of 40-90 bytes), CHANGED of them (default 1%) given new
# values, then a client that holds the active version and needs the staged one, measured both
# ways by benches/delta_client.rs against a release data server:
#   - bytes per client per cycle: the full version and the delta, plain and zstd (goal: the
#     delta at most 5% of the full version);
#   - client time from the request to a verified version: download + verify the full version
#     against download + apply + verify the delta (loopback: the network costs nothing here,
#     so this is the CPU side of the trade; on a real network the bytes above dominate);
#   - the data server's CPU time to make the delta (once per pair, then cached), from /proc.
# ROUNDS (default 5) interleaved rounds after a warm-up, alternating order; medians (min–max).
# Also prints the data server's CPU time (utime+stime from /proc) for its first delta request.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
CHANGED=${CHANGED:-$((KEYS / 100))}
. benches/lib.sh
client=$(cargo bench -p lockstep --bench delta_client --no-run 2>&1 |
  sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
[ -x "$client" ] || { echo "delta_client did not build" >&2; exit 1; }
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT

# A 5 s cycle: the keys go live, then the change is staged and the client takes the URLs the
# check-in offers (they stay good after the version goes live).
# lib.sh's start_server, with room for importing 1M keys in one request.
./target/release/lockstep serve --db "$dir/db" --listen 127.0.0.1:0 --interval 5s \
  --max-body-bytes 1000000000 > "$dir/out" &
server=$!
for _ in $(seq 50); do
  url=$(sed -n 's/lockstep: listening on //p' "$dir/out")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "data server did not start" >&2; exit 1; }
# Values shaped like a price record, random and of varied length (40-90 bytes), so that zstd
# gets no easier a job than on real data (zero-padded counters compress 60-fold and flatter it).
python3 - "$dir/keys.csv" "$dir/changed.csv" "$KEYS" "$CHANGED" <<'PY'
import random, string, sys
keys_path, changed_path, keys, changed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(14)
words = ["spring", "sale", "bundle", "clearance", "members", "weekend", "flash", "outlet",
         "summer", "gift", "loyalty", "launch", "student", "trade", "bulk", "night"]
alnum = string.ascii_uppercase + string.digits
def value():
    promo = " ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
    return "price=%d.%02d;cur=%s;sku=%s;stock=%d;promo=%s" % (
        rng.randint(1, 99999), rng.randint(0, 99), rng.choice(["EUR", "USD", "GBP", "CHF"]),
        "".join(rng.choice(alnum) for _ in range(12)), rng.randint(0, 5000), promo)
with open(keys_path, "w") as f:
    for i in range(keys):
        f.write("key:%028d,%s\n" % (i, value()))
step = max(1, keys // changed)
with open(changed_path, "w") as f:
    for i in list(range(0, keys, step))[:changed]:
        f.write("key:%028d,%s\n" % (i, value()))
PY
./target/release/lockstep --server "$url" import "$dir/keys.csv" > /dev/null
# wait_for CONDITION: polls the sync table until the Python expression over t holds.
wait_for() {
  python3 - "$url" "$1" "$KEYS" <<'PY'
import json, sys, time, urllib.request
url, cond, keys = sys.argv[1], sys.argv[2], int(sys.argv[3])
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer bench"})
    return urllib.request.urlopen(req, timeout=60)
def size(n):
    return int(get("/v1/versions/%d" % n).headers["content-length"])
for _ in range(1200):
    t = json.load(get("/v1/checkin?name=bench"))
    if eval(cond):
        sys.exit(0)
    time.sleep(0.5)
sys.exit("timed out waiting for: " + cond)
PY
}
wait_for 't["active_version"] > 0 and t["staged_version"] == t["active_version"] and size(t["active_version"]) > keys * 40'
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
echo "== $KEYS keys, $CHANGED changed; data server CPU ticks (10 ms) before the change: $(cpu)"
# The client waits for the check-in that offers the delta (the change staged), then measures.
"$client" "$url" bench "${ROUNDS:-5}" "$server" &
client_pid=$!
./target/release/lockstep --server "$url" import "$dir/changed.csv" > /dev/null
wait "$client_pid"
echo "data server CPU ticks after (staging the change, making the delta once, serving the rounds): $(cpu)"
