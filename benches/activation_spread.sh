#!/usr/bin/env bash
# Activation spread: 16 web-server processes with skewed wall clocks (libfaketime) on this
# host, every CPU kept busy by spinning threads, through 20 activations, ROUNDS times.
#
# Each round is `lockstep demo --load --quiet`: per activation, how many servers were on time,
# late, early, missed it or were unresolved (a switch bracket wider than the tolerance, so the
# reads did not show when it switched), the spread of the instants the libraries armed
# ("planned") and of the first reads of the new version ("observed"), and the widest switch bracket (a reader's
# last read of the old version to its first read of the new, on CLOCK_MONOTONIC, which every
# process on a host shares), and for late servers how long after the activation time they still
# served the old version; then that round's summary. At the end, each summary figure as the
# median over the rounds with its range [min–max].
#
#   benches/activation_spread.sh [SERVERS] [ACTIVATIONS] [INTERVAL] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${1:-16}
CYCLES=${2:-20}
INTERVAL=${3:-1s}
ROUNDS=${4:-3}
cargo build --release -q -p lockstep -p lockstep-server
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
for r in $(seq "$ROUNDS"); do
  echo "== round $r of $ROUNDS"
  ./target/release/lockstep demo --servers "$SERVERS" --cycles "$CYCLES" \
    --interval "$INTERVAL" --load --quiet | tee "$out/round-$r"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$out"/round-* <<'PY'
import re, statistics, sys

def figure(label, values, unit=" ms"):
    values = sorted(values)
    if not values:
        print(f"  {label}: none")
        return
    med = statistics.median(values)
    if unit:
        print(f"  {label}: {med:.3f}{unit} [{values[0]:.3f}–{values[-1]:.3f}]")
    else:
        print(f"  {label}: {med:g} [{values[0]:g}–{values[-1]:g}]")

rounds = [open(p).read() for p in sys.argv[1:]]
rows = {}
for text in rounds:
    for name, pattern in [
        ("planned", r"spread, planned \(.*?\): (.*)"),
        ("observed, on time", r"spread, observed \(first reads of the new version, servers on time, narrow brackets; .*?\): (.*)"),
        ("observed, all", r"spread, observed \(first reads, every server .*?\): (.*)"),
        ("bracket", r"switch bracket .*? switches: (.*)"),
        ("late switches, old version served after T", r"late switches, last read of the old version .*?: (.*)"),
    ]:
        m = re.search(pattern, text)
        if m:
            for stat, value in re.findall(r"(p50|p99|max) ([0-9.]+) ms", m.group(1)):
                rows.setdefault(f"{name} {stat}", []).append(float(value))
    m = re.search(r"activations every web server made on time: (\d+)/(\d+)", text)
    rows.setdefault("activations all on time", []).append(int(m.group(1)) if m else 0)
    m = re.search(r"per web server, on time/late/early/missed/unresolved: (.*)", text)
    counts = [tuple(map(int, c.split("/"))) for c in re.findall(r"web-\d+ ([\d/]+)", m.group(1))] if m else []
    for i, what in enumerate(["on time", "late", "early", "missed", "unresolved"]):
        rows.setdefault(f"switches {what} (all servers)", []).append(sum(c[i] for c in counts))
    rows.setdefault("servers with any late or missed", []).append(sum(1 for c in counts if c[1] + c[3] > 0))
    m = re.search(r"armed instant inside the observed bracket: (\d+)/(\d+) .*?; (\d+) switches with a bracket wider", text)
    if m:
        rows.setdefault("narrow brackets (armed instant checked)", []).append(int(m.group(2)))
        rows.setdefault("armed instant outside its narrow bracket", []).append(int(m.group(2)) - int(m.group(1)))
        rows.setdefault("wide brackets (armed instant not checkable)", []).append(int(m.group(3)))
    errors = [float(e) for e in re.findall(r"±([0-9.]+)ms", text.split("clock-offset error bounds:")[-1])]
    if errors:
        rows.setdefault("clock-error bound, smallest", []).append(min(errors))
        rows.setdefault("clock-error bound, largest", []).append(max(errors))

print(f"\nMedian over {len(rounds)} rounds [min–max]:")
for name, values in rows.items():
    figure(name, values, " ms" if (" p" in name or "max" in name or "bound" in name) else "")
PY
