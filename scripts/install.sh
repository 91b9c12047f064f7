#!/usr/bin/env bash
# Builds and installs Lockstep for C programs and operators:
#   PREFIX/bin/lockstep                         the data server and CLI
#   LIBDIR/liblockstep.so.<abi>.<version>       the client library (SONAME liblockstep.so.<abi>)
#   LIBDIR/liblockstep.so.<abi>, liblockstep.so the usual symlinks
#   PREFIX/include/lockstep.h                   the C header
#   LIBDIR/pkgconfig/lockstep.pc                for pkg-config --cflags --libs lockstep
#
#   scripts/install.sh [--prefix DIR] [--libdir DIR] [--destdir DIR] [--profile P] [--no-build]
#
# --prefix defaults to /usr/local, --libdir to PREFIX/lib. --destdir stages the files under
# another root with the paths of PREFIX inside them (packaging). --profile picks the cargo
# profile (release; CI uses debug, which it has built already). Run ldconfig after installing
# into a system directory.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local libdir="" destdir="" profile=release build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --libdir) libdir=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac
libdir=${libdir:-$prefix/lib}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
abi=$(sed -n 's/^pub const SYNC_ABI_VERSION: u32 = \([0-9]*\);$/\1/p' \
  $(ls src/ffi.rs src/ffi/mod.rs 2>/dev/null) /dev/null | head -1)
[ -n "$version" ] && [ -n "$abi" ] || { echo "install.sh: version or ABI not found" >&2; exit 1; }

cargo_profile=$profile
[ "$profile" = debug ] && cargo_profile=dev
if [ "$build" = 1 ]; then
  cargo build --profile "$cargo_profile" -p lockstep -p lockstep-server
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out="$target_dir/$profile"
for f in liblockstep.so lockstep; do
  [ -f "$out/$f" ] || { echo "install.sh: $out/$f is missing: build it or drop --no-build" >&2; exit 1; }
done

real="liblockstep.so.$abi.$version"
install -d "$destdir$prefix/bin" "$destdir$libdir/pkgconfig" "$destdir$prefix/include"
install -m 0755 "$out/lockstep" "$destdir$prefix/bin/lockstep"
install -m 0755 "$out/liblockstep.so" "$destdir$libdir/$real"
ln -sfn "$real" "$destdir$libdir/liblockstep.so.$abi"
ln -sfn "liblockstep.so.$abi" "$destdir$libdir/liblockstep.so"
install -m 0644 include/lockstep.h "$destdir$prefix/include/lockstep.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@VERSION@|$version|" \
  packaging/lockstep.pc.in > "$destdir$libdir/pkgconfig/lockstep.pc"
chmod 0644 "$destdir$libdir/pkgconfig/lockstep.pc"
echo "installed lockstep $version (ABI $abi) under $destdir$prefix"
