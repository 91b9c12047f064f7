#!/usr/bin/env bash
# Installs what building and testing Lockstep needs on a fresh Debian machine with Rust.
# Safe to run again: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

DEBIAN_PACKAGES=(
  build-essential pkg-config ca-certificates curl
)

if command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${DEBIAN_PACKAGES[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust (rustup) first" >&2
  exit 1
fi
