#!/usr/bin/env bash
# Data-server throughput with 64 concurrent connections (wrk), side by side with nginx serving
# the same bytes as static files, in one run:
#   1. version downloads (10k keys, about 1.1 MB) per second and MB/s;
#   2. check-ins that end in 304 (If-None-Match), versus nginx's 304 for a tiny static file.
# Needs: apt-get install -y wrk nginx (scripts/bench-setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
. benches/lib.sh
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
start_server 1s
load_keys 10000
for _ in $(seq 50); do
  active=$(curl -s "$url/v1/checkin?name=bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_version"])')
  [ "$active" -ge 2 ] && break
  sleep 0.2
done
mkdir -p "$dir/www"
curl -s -o "$dir/www/version.bin" "$url/v1/versions/$active"
curl -s -o "$dir/www/tiny.json" "$url/v1/checkin?name=bench"
port=$(free_port)
cat > "$dir/nginx.conf" <<CONF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  server {
    listen 127.0.0.1:$port;
    root $dir/www;
  }
}
CONF
chmod -R a+rX "$dir/www"
nginx -c "$dir/nginx.conf"
sleep 0.3
nginx_url="http://127.0.0.1:$port"
size=$(stat -c %s "$dir/www/version.bin")

measure() { # url [header] -> "requests/s MB/s"
  local out
  if [ $# -gt 1 ]; then out=$(wrk -t2 -c64 -d"$DURATION" -H "$2" "$1"); else out=$(wrk -t2 -c64 -d"$DURATION" "$1"); fi
  local rps mbs
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  mbs=$(echo "$out" | awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} else if (v ~ /KB/) {sub("KB","",v); v/=1024}; print v}')
  echo "$rps $mbs"
}

read -r l_rps l_mbs < <(measure "$url/v1/versions/$active")
read -r n_rps n_mbs < <(measure "$nginx_url/version.bin")
etag=$(curl -sI "$url/v1/checkin?name=bench" | awk -F': ' 'tolower($1)=="etag" {print $2}' | tr -d '\r')
n_etag=$(curl -sI "$nginx_url/tiny.json" | awk -F': ' 'tolower($1)=="etag" {print $2}' | tr -d '\r')
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$url/v1/checkin?name=bench")" = 304 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $n_etag" "$nginx_url/tiny.json")" = 304 ]
read -r lc_rps _ < <(measure "$url/v1/checkin?name=bench" "If-None-Match: $etag")
read -r nc_rps _ < <(measure "$nginx_url/tiny.json" "If-None-Match: $n_etag")

python3 - "$size" "$l_rps" "$l_mbs" "$n_rps" "$n_mbs" "$lc_rps" "$nc_rps" <<'PY'
import sys
size, l_rps, l_mbs, n_rps, n_mbs, lc, nc = sys.argv[1:]
size = int(size); l_rps, l_mbs, n_rps, n_mbs, lc, nc = map(float, (l_rps, l_mbs, n_rps, n_mbs, lc, nc))
print(f"version downloads ({size/1e6:.2f} MB), 64 connections:")
print(f"  lockstep {l_rps:8.0f} req/s {l_mbs:8.0f} MB/s | nginx {n_rps:8.0f} req/s {n_mbs:8.0f} MB/s | ratio {l_rps/n_rps:.2f} (target >= 0.8)")
print("check-ins ending in 304, 64 connections:")
print(f"  lockstep {lc:8.0f} req/s | nginx 304 on a tiny static file {nc:8.0f} req/s | ratio {lc/nc:.2f}")
PY
