#!/usr/bin/env bash
# nginx serving a cached value through the lockstep module, interleaved in one run (wrk, 64
# connections, 2 workers) with the same nginx serving the same bytes two other ways:
#   - `return 200 "<same bytes>"`: the fair in-memory peer, with the same headers;
#   - a static file, at its fair best (open_file_cache, sendfile, long keep-alive).
# Every response's status is counted and reported. ROUNDS (default 5) and DURATION (per wrk
# run, default 5s) tune it.
# Needs: scripts/bench-setup.sh, then bindings/nginx/build.sh (run here).
set -euo pipefail
cd "$(dirname "$0")/.."
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
version=$(curl -s "$url/v1/checkin?name=bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_version"])')
port=$(free_port)
printf 1.25 > "$dir/static.txt"
chmod 644 "$dir/static.txt"
cat > "$dir/nginx.conf" <<CONF
load_module $PWD/target/nginx-module/ngx_http_lockstep_module.so;
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 1024; }
http {
  $NGINX_FAIR_HTTP
  lockstep_url $url;
  lockstep_name nginx;
  lockstep_bootstrap_wait 5s;
  server {
    listen 127.0.0.1:$port;
    location /prices/ { lockstep_serve; }
    # What lockstep_serve answers, byte for byte, from nginx's own memory.
    location = /return {
      default_type application/octet-stream;
      add_header X-Lockstep-Version $version;
      return 200 "1.25";
    }
    location = /static.txt { root $dir; default_type application/octet-stream; }
  }
}
CONF
nginx -c "$dir/nginx.conf" -p "$dir" &
nginx=$!
sleep 1
base="http://127.0.0.1:$port"
for path in /prices/price:apple /return /static.txt; do
  [ "$(curl -s "$base$path")" = 1.25 ] || { echo "$path does not answer 1.25" >&2; exit 1; }
done

contender lockstep_serve "$base/prices/price:apple"
contender return-200 "$base/return"
contender static-file "$base/static.txt"
interleave lockstep_serve return-200 static-file
compare "nginx, 2 workers, 64 connections: lockstep_serve vs return 200 with the same bytes and headers vs a static file (open_file_cache)" \
  lockstep_serve return-200 static-file
