#!/usr/bin/env bash
# Activation spread: 16 web-server processes with skewed wall clocks (libfaketime) on this
# host, every CPU kept busy by spinning threads, through 20 activations. Prints, per
# activation, the spread of activation instants across the 16 in true time (CLOCK_MONOTONIC,
# one clock for every process on the host), then p50 / p99 / max and each client's
# clock-offset error bound.
#
#   benches/activation_spread.sh [SERVERS] [ACTIVATIONS] [INTERVAL]
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${1:-16}
CYCLES=${2:-20}
INTERVAL=${3:-1s}
cargo build --release -q -p lockstep -p lockstep-server
exec ./target/release/lockstep demo --servers "$SERVERS" --cycles "$CYCLES" \
  --interval "$INTERVAL" --load --quiet
