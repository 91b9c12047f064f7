#!/usr/bin/env bash
# Long-poll check-ins at scale: N (default 10000) check-ins held by one release `lockstep serve`
# (SQLite, --interval 10m, --max-connections 12000 --max-held-checkins 10000: the documented setting for 10,000 waiters,
# which needs an open-file hard limit of at least 12064), driven by benches/longpoll.py (one
# Python asyncio client): the data server's RSS and CPU with none and with N held, and the
# wake-up time from sending a change of the sync table until every held check-in's answer has
# arrived (p50, p99, max), over ROUNDS rounds (default 5) after an unrecorded warm-up, medians
# with min-max.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
. benches/lib.sh
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -Hn)" -lt $((N + N / 5 + 64)) ]; then
  echo "the open-file hard limit $(ulimit -Hn) is too low for $N held check-ins" >&2
  exit 1
fi
cleanup() { kill "$server" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
./target/release/lockstep serve --db "$dir/db" --listen 127.0.0.1:0 --interval 10m \
  --max-connections $((N + N / 5)) --max-held-checkins "$N" > "$dir/out" &
server=$!
for _ in $(seq 50); do
  url=$(sed -n 's/lockstep: listening on //p' "$dir/out")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "data server did not start" >&2; exit 1; }
python3 benches/longpoll.py "$url" "$server" "$N" "$ROUNDS"
