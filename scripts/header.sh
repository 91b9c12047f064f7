#!/usr/bin/env bash
# Regenerates include/lockstep.h with the pinned cbindgen; with --check, fails if it changed.
set -euo pipefail
cd "$(dirname "$0")/.."
CBINDGEN_VERSION=0.29.2
if ! cbindgen --version 2>/dev/null | grep -q " $CBINDGEN_VERSION\$"; then
  cargo install cbindgen --version "$CBINDGEN_VERSION" --locked
fi
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp)
  cbindgen --config cbindgen.toml --crate lockstep --output "$tmp" --quiet
  if ! diff -u include/lockstep.h "$tmp"; then
    echo "include/lockstep.h is stale: run scripts/header.sh and commit it" >&2
    exit 1
  fi
  rm -f "$tmp"
else
  cbindgen --config cbindgen.toml --crate lockstep --output include/lockstep.h --quiet
fi
