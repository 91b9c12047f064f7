#!/usr/bin/env bash
# Installs what the benchmarks compare against: nginx, wrk, redis-server, redis-py, valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
$SUDO apt-get install -y -qq --no-install-recommends nginx wrk redis-server valgrind >/dev/null
"${PYTHON:-python3}" -m pip install -q --disable-pip-version-check redis
