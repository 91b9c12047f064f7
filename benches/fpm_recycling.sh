#!/usr/bin/env bash
# What worker recycling costs under PHP-FPM (issue 10): nginx in front of PHP-FPM (8 workers,
# pm = static, pm.max_requests = 50) serving a page that reads one key of a ~10 MB version
# (10,000 keys of 1,000 bytes), interleaved in one run (wrk, 64 connections):
#   a   Lockstep with the host cache (the default; lockstep.cache_dir a directory of the
#       workers' user, mode 0700): a recycled worker maps the version the host already holds;
#   b   Lockstep with the host cache off (lockstep.cache_dir empty): each recycled worker
#       downloads the whole version again;
#   c   the same page without Lockstep (no extension): a constant of the same 1,000 bytes;
#   a0, c0  a and c with pm.max_requests = 0 (no recycling).
# Each pool has its own nginx (bindings/php/example templates, rendered by
# tests/servers/servers_support.py). Prints medians (min–max) and the ratios a/c, b/c and
# a0/c0 taken round by round. ROUNDS (default 5) and DURATION (per wrk run, default 5s) tune it.
# Needs: scripts/bench-setup.sh (nginx, wrk) and php-fpm8.2 with its dev files; builds the
# release library and extension (target/php-ext).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
. benches/lib.sh
LOCKSTEP_LIBDIR="$PWD/target/release" ./bindings/php/build.sh > /dev/null 2>&1
EXT="$PWD/target/php-ext/modules/lockstep.so"
USER_=www-data # the workers' user; the masters run as root
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
start_server 2s

# The version: 10,000 keys of 1,000 bytes (~10 MB), imported in one POST /v1/admin/import.
python3 - "$url" <<'PY'
import json, sys, urllib.request
entries = [{"key": "key:%06d" % i, "value": ("%06d" % i) * 166 + "0000"} for i in range(10_000)]
req = urllib.request.Request(sys.argv[1] + "/v1/admin/import",
                             data=json.dumps({"entries": entries}).encode(),
                             headers={"Authorization": "Bearer bench",
                                      "Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=60).read()
PY
key=key:004242
value=$(python3 -c 'print(("%06d" % 4242) * 166 + "0000", end="")')

# pool NAME MAX_REQUESTS lockstep|plain CACHE: PHP-FPM (8 workers) and its nginx; sets
# base[NAME]. CACHE: "host" (a directory of the workers, 0700) or "" (off).
declare -A base
pool() {
  local name=$1 max=$2 kind=$3 cache=$4 d="$dir/$1" port
  mkdir -p "$d/root"
  chmod 755 "$d" "$d/root"
  if [ "$kind" = lockstep ]; then
    printf '<?php\n$v = (new Lockstep\\Client())->get(%s);\nif ($v === null) { http_response_code(404); }\necho $v;\n' \
      "'$key'" > "$d/root/index.php"
  else
    printf '<?php\necho %s;\n' "'$value'" > "$d/root/index.php"
  fi
  chmod 644 "$d/root/index.php"
  port=$(free_port)
  python3 - "$d" "$url" "$USER_" "$max" "$cache" "$port" "$kind" <<'PY'
import os, sys
sys.path.insert(0, "tests/servers")
from servers_support import host_cache, render
d, url, user, max_requests, cache, port, kind = sys.argv[1:]
if cache == "host":
    cache = host_cache(d, user)
ex = "bindings/php/example"
conf = render(f"{ex}/php-fpm.conf", f"{d}/php-fpm.conf", DIR=d, URL=url, USER=user, GROUP=user,
              CACHE=cache, WORKERS=8, MAX_REQUESTS=max_requests)
if kind == "plain":  # no extension: drop its settings
    text = "".join(l for l in open(conf) if "lockstep." not in l)
    open(conf, "w").write(text)
render(f"{ex}/nginx.conf", f"{d}/nginx.conf", DIR=d, PORT=port, ROOT=f"{d}/root")
PY
  local ext=()
  [ "$kind" = lockstep ] && ext=(-d "extension=$EXT")
  php-fpm8.2 -F "${ext[@]}" -y "$d/php-fpm.conf" -p "$d" > "$d/fpm.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$d/php-fpm.sock" ] && break; sleep 0.1; done
  nginx -c "$d/nginx.conf" -p "$d" > "$d/nginx.out" 2>&1 &
  pids+=($!)
  base[$name]="http://127.0.0.1:$port/"
}
pool a 50 lockstep host
pool b 50 lockstep ""
pool c 50 plain ""
pool a0 0 lockstep host
pool c0 0 plain ""

# Every page answers the same 1,000 bytes (the Lockstep ones once the version is active).
for name in a b c a0 c0; do
  for _ in $(seq 300); do
    [ "$(curl -s "${base[$name]}")" = "$value" ] && continue 2
    sleep 0.1
  done
  echo "$name does not answer the value" >&2
  tail -5 "$dir/$name/php-fpm.log" "$dir/$name/nginx-error.log" >&2 || true
  exit 1
done

for name in a b c a0 c0; do contender "$name" "${base[$name]}"; done
interleave a b c a0 c0
label="PHP-FPM (8 workers, pm static) behind nginx, one 1,000-byte key of a 10,000-key (~10 MB) version, 64 connections"
compare "$label; max_requests=50: a host cache vs c without Lockstep" a c
compare "$label; max_requests=50: b no host cache (cache_dir=) vs c without Lockstep" b c
compare "$label; max_requests=0: a0 host cache vs c0 without Lockstep" a0 c0
echo "versions downloaded (data server's count):"
./target/release/lockstep --server "$url" history --json | python3 -c '
import json, sys
h = json.load(sys.stdin)
for v in (h if isinstance(h, list) else h.get("versions", [])):
    print("  version", v.get("version"), "downloads", v.get("downloads"))'
