#!/usr/bin/env bash
# Generates lockstep_arginfo.h from lockstep.stub.php with php-src's build/gen_stub.php, as
# php-src does for its own extensions; with --check, fails if the committed header differs.
# gen_stub.php comes with Debian's php8.2-dev; the PHP-Parser it needs with php-parser (it
# would otherwise download one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gen=$(ls /usr/lib/php/*/build/gen_stub.php 2>/dev/null | tail -1)
[ -n "$gen" ] || { echo "gen_arginfo.sh: gen_stub.php not found: apt-get install php8.2-dev" >&2; exit 1; }
[ -d /usr/share/php/PhpParser ] || { echo "gen_arginfo.sh: PHP-Parser not found: apt-get install php-parser" >&2; exit 1; }
work="$root/target/php-stub"
rm -rf "$work"
mkdir -p "$work"
cp "$gen" "$work/gen_stub.php"
# gen_stub.php loads PHP-Parser from PHP-Parser-<version>/lib next to itself.
version=$(sed -n 's/^ *\$version = "\(4\.[0-9.]*\)";$/\1/p' "$work/gen_stub.php" | head -1)
mkdir -p "$work/PHP-Parser-$version"
ln -s /usr/share/php "$work/PHP-Parser-$version/lib"
cp "$here/lockstep.stub.php" "$work/"
php "$work/gen_stub.php" --force-regeneration "$work/lockstep.stub.php"
if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$here/lockstep_arginfo.h" "$work/lockstep_arginfo.h"; then
    echo "bindings/php/lockstep_arginfo.h is stale: run bindings/php/gen_arginfo.sh and commit it" >&2
    exit 1
  fi
else
  cp "$work/lockstep_arginfo.h" "$here/lockstep_arginfo.h"
fi
