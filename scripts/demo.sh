#!/usr/bin/env bash
# The main job: sets up a fresh machine, builds, and runs `lockstep demo` on the embedded
# SQLite default — a data server and web servers with skewed clocks switching together.
# Arguments go to `lockstep demo` (try --servers 8 --cycles 10, or --watch).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p lockstep -p lockstep-server
exec ./target/release/lockstep demo "$@"
