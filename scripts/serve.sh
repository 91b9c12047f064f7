#!/usr/bin/env bash
# The main job on the embedded default: builds and runs the data server on ./lockstep.db.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p lockstep-server
export LOCKSTEP_ADMIN_TOKEN="${LOCKSTEP_ADMIN_TOKEN:-change-me}"
echo "admin token: \$LOCKSTEP_ADMIN_TOKEN (set it in the shell where you run 'lockstep' commands)"
exec ./target/release/lockstep serve "$@"
