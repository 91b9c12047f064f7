#!/usr/bin/env bash
# Builds the PHP extension against liblockstep.so, out of tree in target/php-ext, and with
# "test" runs its phpt tests (make test). Needs Debian's php8.2-dev.
#   bindings/php/build.sh [test]     -> target/php-ext/modules/lockstep.so (this checkout's library)
#   bindings/php/build.sh --installed [test]
#                                    -> target/php-ext-installed/modules/lockstep.so, linked to
#                                       the installed library found by pkg-config
#                                       (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig for a prefix)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$root/target/php-ext"
with="--with-lockstep=$root"
if [ "${1:-}" = "--installed" ]; then
  build="$root/target/php-ext-installed"
  with=""  # the default, as PIE runs it: pkg-config
  shift
fi
rm -rf "$build"
mkdir -p "$build"
cp -r "$here/config.m4" "$here/lockstep.c" "$here/php_lockstep.h" "$here/lockstep_arginfo.h" \
  "$here/tests" "$build/"
cd "$build"
phpize >/dev/null
./configure ${with:+"$with"} >/dev/null
make -s >/dev/null
echo "built $build/modules/lockstep.so"
if [ "${1:-}" = "test" ]; then
  export LOCKSTEP_BIN="${LOCKSTEP_BIN:-$root/target/debug/lockstep}"
  # A host cache of this run's own: a data server started here never meets a schedule that
  # an earlier run left for the same port.
  LOCKSTEP_CACHE_DIR=$(mktemp -d)
  export LOCKSTEP_CACHE_DIR
  trap 'rm -rf "$LOCKSTEP_CACHE_DIR"' EXIT
  NO_INTERACTION=1 REPORT_EXIT_STATUS=1 TEST_PHP_ARGS="-q --show-diff" make test
fi
