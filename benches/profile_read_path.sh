#!/usr/bin/env bash
# Where the read path's instructions go: callgrind over sync_get on 10k keys, counting only
# inside sync_get (instruction counts are repeatable on a noisy machine; times are not).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
start_server 500ms
load_keys 10000
sleep 1.5
cc -O2 -Iinclude benches/profile_get.c -Ltarget/release -Wl,-rpath,"$PWD/target/release" -llockstep -o "$dir/profile_get"
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --toggle-collect=sync_get \
  "$dir/profile_get" "$url" 10000 100000 2>/dev/null
callgrind_annotate --inclusive=yes "$dir/cg.out" 2>/dev/null | sed -n "/file:function/,/^$/p" | head -24
