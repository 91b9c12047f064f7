#!/usr/bin/env bash
# Runs one coverage-guided fuzz target for a bounded time, on the stable toolchain.
#
#   ./scripts/fuzz.sh TARGET SECONDS     TARGET: version, checkin, options, import, delta
#   ./scripts/fuzz.sh --build            builds every target (CI does this once)
#
# libFuzzer through libfuzzer-sys, instrumented with the same stable rustc flags that
# `cargo fuzz build --sanitizer none` passes (sancov passes through -C llvm-args): no nightly,
# no RUSTC_BOOTSTRAP. Overflow checks and debug assertions are on, so an arithmetic overflow
# is a crash. The seed corpus is fuzz/corpus/TARGET (kept small, in git); what a run adds goes
# to target/fuzz/corpus/TARGET, and a crash's input to fuzz/artifacts/TARGET/ (turn it into a
# regression test and a seed). See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(version checkin options import delta)
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$PWD/target/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

build() {
  # --target: RUSTFLAGS then reach only the fuzzed code, not build scripts.
  (cd fuzz && cargo build --release --target "$TRIPLE" "$@")
}

if [ "${1:-}" = "--build" ]; then
  build --bins
  exit 0
fi

target=${1:?usage: scripts/fuzz.sh TARGET SECONDS (targets: ${TARGETS[*]})}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS}
case " ${TARGETS[*]} " in *" $target "*) ;; *) echo "fuzz.sh: no target '$target'" >&2; exit 2 ;; esac

build --bin "$target"
work="$CARGO_TARGET_DIR/corpus/$target"
artifacts="fuzz/artifacts/$target"
mkdir -p "$work" "$artifacts"
# -max_len bounds an input (and so a run's memory); -rss_limit_mb makes a leak a finding.
"$CARGO_TARGET_DIR/$TRIPLE/release/$target" "$work" "fuzz/corpus/$target" \
  -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
  -artifact_prefix="$artifacts/" -print_final_stats=1 2>&1 | tail -n 25
echo "fuzz $target: ${seconds}s, no crash; corpus $(ls "$work" | wc -l) inputs in $work"
