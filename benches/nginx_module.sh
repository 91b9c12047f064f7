#!/usr/bin/env bash
# nginx serving a cached value through the lockstep module versus the same nginx serving the
# same bytes as a static file, side by side in one run (wrk, 64 connections).
# Needs: scripts/bench-setup.sh, then bindings/nginx/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
. benches/lib.sh
LOCKSTEP_LIBDIR="$PWD/target/release" ./bindings/nginx/build.sh >/dev/null
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null
  [ -n "${nginx:-}" ] && kill "$nginx" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
start_server 500ms
./target/release/lockstep --server "$url" put price:apple 1.25 > /dev/null
sleep 1.5
port=$(free_port)
sed -e "s|@MODULE@|$PWD/target/nginx-module/ngx_http_lockstep_module.so|" -e "s|@DIR@|$dir|g" \
    -e "s|@PORT@|$port|" -e "s|@URL@|$url|" -e "s|worker_processes 4;|worker_processes 2;|" \
    bindings/nginx/example/nginx.conf > "$dir/nginx.conf"
printf 1.25 > "$dir/static.txt"
chmod 644 "$dir/static.txt"
nginx -c "$dir/nginx.conf" -p "$dir" &
nginx=$!
sleep 1
[ "$(curl -s "http://127.0.0.1:$port/prices/price:apple")" = 1.25 ]
[ "$(curl -s "http://127.0.0.1:$port/static.txt")" = 1.25 ]
rps() { wrk -t2 -c64 -d"$DURATION" "$1" | awk '/Requests\/sec/ {print $2}'; }
module=$(rps "http://127.0.0.1:$port/prices/price:apple")
static=$(rps "http://127.0.0.1:$port/static.txt")
python3 -c "m, s = $module, $static; print(f'nginx, 2 workers, 64 connections: lockstep_serve {m:.0f} req/s vs static file {s:.0f} req/s: ratio {m/s:.2f}')"
