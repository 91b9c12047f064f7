#!/usr/bin/env bash
# Builds the dynamic module against Debian's nginx-dev (the sources of the installed nginx,
# configured --with-compat so the module loads into Debian's binary).
#   bindings/nginx/build.sh   -> target/nginx-module/ngx_http_lockstep_module.so
#   bindings/nginx/build.sh --installed
#                             -> target/nginx-module-installed/ngx_http_lockstep_module.so,
#                                linked to the installed library pkg-config finds
# LOCKSTEP_LIBDIR picks the checkout's liblockstep.so to link (default: target/release, else
# target/debug).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
src=/usr/share/nginx/src
[ -x "$src/configure" ] || { echo "nginx sources not found: apt-get install nginx-dev" >&2; exit 1; }
out="$root/target/nginx-module"
build="$root/target/nginx-build"
if [ "${1:-}" = "--installed" ]; then
  unset LOCKSTEP_LIBDIR LOCKSTEP_ROOT
  out="$root/target/nginx-module-installed"
  # Its own build tree: a build of the checkout's module may run beside it (CI, tests).
  build="$root/target/nginx-build-installed"
else
  if [ -z "${LOCKSTEP_LIBDIR:-}" ]; then
    for profile in release debug; do
      if [ -f "$root/target/$profile/liblockstep.so" ]; then LOCKSTEP_LIBDIR="$root/target/$profile"; break; fi
    done
  fi
  [ -n "${LOCKSTEP_LIBDIR:-}" ] || { echo "liblockstep.so not found: cargo build --release -p lockstep" >&2; exit 1; }
  export LOCKSTEP_ROOT="$root" LOCKSTEP_LIBDIR
fi
rm -rf "$build"
cp -r "$src" "$build"
cd "$build"
# What the probe found ("checking for liblockstep ...") stays in $build/configure.log.
./configure --with-compat --add-dynamic-module="$here" > configure.log
make -s -f objs/Makefile modules >/dev/null
mkdir -p "$out"
cp objs/ngx_http_lockstep_module.so "$out/"
echo "built $out/ngx_http_lockstep_module.so"
