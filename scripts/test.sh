#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
cargo test --workspace
