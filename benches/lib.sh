# Shared by the benchmark scripts: a release data server in a throwaway directory.
# Source it after `cd` to the repository root; it sets $dir, $server and $url.

cargo build --release -q -p lockstep -p lockstep-server
dir=$(mktemp -d)
chmod 755 "$dir" # nginx workers run as an unprivileged user
export LOCKSTEP_ADMIN_TOKEN=bench LOCKSTEP_LOG=warn

# start_server INTERVAL: starts `lockstep serve`, sets $server (pid) and $url.
start_server() {
  ./target/release/lockstep serve --db "$dir/db" --listen 127.0.0.1:0 --interval "$1" > "$dir/out" &
  server=$!
  for _ in $(seq 50); do
    url=$(sed -n 's/lockstep: listening on //p' "$dir/out")
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "data server did not start" >&2
  return 1
}

# load_keys N: imports N keys (32-byte keys, 64-byte values) into production.
load_keys() {
  python3 - "$dir/keys.csv" "$1" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write("key:%028d,value:%08d:%049d\n" % (i, 0, i))
PY
  ./target/release/lockstep --server "$url" import "$dir/keys.csv" > /dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
