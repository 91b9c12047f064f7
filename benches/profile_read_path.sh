#!/usr/bin/env bash
# Where the read path's instructions go: callgrind over sync_get on 10k keys, counting only
# inside sync_get (instruction counts are repeatable on a noisy machine; times are not).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p lockstep -p lockstep-server
dir=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
export LOCKSTEP_ADMIN_TOKEN=profile
./target/release/lockstep serve --db "$dir/db" --listen 127.0.0.1:0 --interval 500ms > "$dir/out" &
server=$!
sleep 0.5
url=$(sed -n 's/lockstep: listening on //p' "$dir/out")
python3 - "$dir/keys.csv" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(10000):
        f.write("key:%028d,value:%08d:%049d\n" % (i, 0, i))
PY
./target/release/lockstep --server "$url" import "$dir/keys.csv"
sleep 1.5
cc -O2 -Iinclude benches/profile_get.c -Ltarget/release -Wl,-rpath,"$PWD/target/release" -llockstep -o "$dir/profile_get"
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --toggle-collect=sync_get \
  "$dir/profile_get" "$url" 10000 100000 2>/dev/null
callgrind_annotate --inclusive=yes "$dir/cg.out" 2>/dev/null | sed -n "/file:function/,/^$/p" | head -24
