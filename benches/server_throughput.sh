#!/usr/bin/env bash
# Data-server throughput with 64 concurrent connections (wrk), interleaved with nginx serving
# the same bytes as static files (open_file_cache, sendfile, long keep-alive) in one run:
#   1. version downloads (10k keys, about 1.1 MB): requests/s and MB/s, against nginx with
#      sendfile and without (read into 1 MB buffers);
#   2. check-ins answered 304 (If-None-Match with the sync table's ETag), versus nginx's 304
#      for a tiny static file. Each check-in carries the query a real client sends (name, host,
#      pid, staged, active, offset_us, error_us, lagging), one of 64 web servers on 8 hosts,
#      picked in turn by a wrk `request()`; nginx gets the same requests.
# The timed runs are plain wrk (see benches/lib.sh); each contender's status mix comes from a
# short status-counting run after the rounds, and the data server's own download counts
# (`lockstep history --json`) are checked against every download wrk saw. The interval is set
# to an hour before the measurement, so no rotation changes the ETag during the run: the 304s
# are all 304s.
# ROUNDS (default 5) and DURATION (per wrk run, default 5s) tune it.
# Needs: scripts/bench-setup.sh (wrk, nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
sync_field() { # FIELD of the sync table a check-in answers
  curl -s "$url/v1/checkin?name=bench" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"
}
checkin_etag() {
  curl -sI "$url/v1/checkin?name=bench" | awk -F': ' 'tolower($1)=="etag" {print $2}' | tr -d '\r'
}

start_server 1s
load_keys 10000
for _ in $(seq 50); do
  active=$(sync_field active_version)
  [ "$active" -ge 2 ] && break
  sleep 0.2
done
# An hour between activations: once the rotation already scheduled has passed, the sync table
# (and its ETag) stays the same for the whole run.
./target/release/lockstep --server "$url" interval 1h > /dev/null
for _ in $(seq 100); do
  ahead=$(curl -s "$url/v1/checkin?name=bench" | python3 -c '
import json, sys
t = json.load(sys.stdin)
print((t["activation_time_us"] - t["server_time_us"]) // 1000000)')
  [ "$ahead" -gt 600 ] && break
  sleep 0.2
done
[ "$ahead" -gt 600 ] || { echo "the next activation is still only ${ahead}s away" >&2; exit 1; }
active=$(sync_field active_version)
staged=$(sync_field staged_version)

# 64 web servers on 8 hosts, each checking in as src/retrieval.rs does, in turn per connection.
checkins_lua() { # PATH
  cat <<LUA
local requests, i = {}, 0
function init(args)
  for n = 0, 63 do
    local path = string.format(
      "$1?name=web-%d&host=host-%d&pid=%d&staged=$staged&active=$active&offset_us=%d&error_us=%d&lagging=0",
      n, n % 8, 20000 + n, (n * 7919) % 5000 - 2500, 300 + (n * 37) % 900)
    requests[n + 1] = wrk.format(nil, path)
  end
  i = math.random(#requests)
end
function request() i = i % #requests + 1; return requests[i] end
LUA
}
checkins_lua /v1/checkin > "$dir/checkins.lua"
checkins_lua /tiny.json > "$dir/tiny.lua"

mkdir -p "$dir/www"
curl -s -o "$dir/www/version.bin" "$url/v1/versions/$active"
curl -s -o "$dir/www/tiny.json" "$url/v1/checkin?name=bench"
chmod -R a+rX "$dir/www"
port=$(free_port)
cat > "$dir/nginx.conf" <<CONF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
  $NGINX_FAIR_HTTP
  server {
    listen 127.0.0.1:$port;
    root $dir/www;
    # The same file read into nginx's buffers and written from them: on loopback, sendfile is
    # not always nginx's fastest way, so its downloads are measured both ways.
    location /copy/ {
      alias $dir/www/;
      sendfile off;
      output_buffers 2 1m;
    }
  }
}
CONF
nginx -c "$dir/nginx.conf"
sleep 0.3
nginx_url="http://127.0.0.1:$port"
size=$(stat -c %s "$dir/www/version.bin")

etag=$(checkin_etag)
n_etag=$(curl -sI "$nginx_url/tiny.json" | awk -F': ' 'tolower($1)=="etag" {print $2}' | tr -d '\r')
real_query="name=web-1&host=host-1&pid=20001&staged=$staged&active=$active&offset_us=-1200&error_us=400&lagging=0"
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$url/v1/checkin?$real_query")" = 304 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $n_etag" "$nginx_url/tiny.json")" = 304 ]

downloads() { # of the active version, as the data server counts them
  ./target/release/lockstep --server "$url" --json history |
    python3 -c "import json,sys; print(next(v['downloads'] for v in json.load(sys.stdin) if v['version'] == $active))"
}

contender lockstep-download "$url/v1/versions/$active"
contender nginx-download "$nginx_url/version.bin"
contender nginx-download-copy "$nginx_url/copy/version.bin"
contender lockstep-checkin-304 "$url/v1/checkin" "If-None-Match: $etag" "$dir/checkins.lua"
contender nginx-304 "$nginx_url/tiny.json" "If-None-Match: $n_etag" "$dir/tiny.lua"
downloads_before=$(downloads)
interleave lockstep-download nginx-download nginx-download-copy lockstep-checkin-304 nginx-304
sleep 1.5 # the data server adds its download counts to the database every second
downloads_after=$(downloads)
etag_after=$(checkin_etag)

compare "version downloads ($(python3 -c "print(f'{$size/1e6:.2f}')") MB), 64 connections (target: ratio >= 0.8)" \
  lockstep-download nginx-download nginx-download-copy
echo "  the data server counted $((downloads_after - downloads_before)) downloads (200s) of v$active;" \
  "wrk counted $(answered "$url/v1/versions/$active") responses in all its runs of it"
compare "check-ins with If-None-Match, 64 connections, vs nginx's 304 on a tiny static file" \
  lockstep-checkin-304 nginx-304
if [ "$etag" = "$etag_after" ]; then
  echo "  the sync table's ETag was $etag before and after the run: nothing rotated"
else
  echo "  the sync table changed during the run ($etag -> $etag_after): some check-ins were 200s"
fi
