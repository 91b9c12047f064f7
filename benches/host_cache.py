#!/usr/bin/env python3
"""The host cache against per-process mode (cache_dir=): web-server processes on one host
(benches/host_cache.c over the release library), both modes in one run, interleaved over
several rounds in alternating order, reported as medians with their min-max.

    python3 benches/host_cache.py [--processes 16] [--rounds 5] [--keys 50000]
                                  [--value-bytes 1000] [--interval 5s]

Each mode, each round, against a release data server holding a version of keys x
value-bytes (51 MB by default):
  1. cold start, data server up: the processes start together on an empty host (host mode:
     a fresh cache directory); time from each process's spawn to its first read;
  2. a new version of the same size is published and every process switches to it: the
     spread of the instants they had armed for it (sync_stats.next_activation_mono_ns; every
     process of a host reads the same CLOCK_MONOTONIC) and of their first reads of it;
  3. check-ins per cycle over quiet cycles: the sum of the processes' own counts
     (sync_stats.checkins);
  4. downloads per version, as the data server counts them (history's `downloads`), for the
     versions of steps 1 and 2;
  5. memory: the processes' summed PSS (/proc/<pid>/smaps_rollup) after the switch;
  6. warm start, data server up: one new process, then as many as the host has, join it;
  7. data server down: one new process, then as many as the host has, start; in per-process
     mode they have nothing to serve and sync_open fails after bootstrap_wait_ms (2 s here).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bindings" / "python" / "tests"))
sys.path.insert(0, str(REPO / "tests" / "servers"))
os.environ["LOCKSTEP_BIN"] = str(REPO / "target" / "release" / "lockstep")

from lockstep_server import Server, wait_for  # noqa: E402
from servers_support import free_port, publish_big  # noqa: E402

BOOTSTRAP_WAIT_MS = 2000
KEY = "k000001"


class Proc:
    """One benches/host_cache.c process and the lines it printed."""

    def __init__(self, exe, options):
        self.spawned = time.monotonic_ns()
        self.p = subprocess.Popen([exe, options, KEY], stdout=subprocess.PIPE, text=True)
        self.lines = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            with self.lock:
                self.lines.append(line.split())

    def last(self, word, where=lambda f: True):
        with self.lock:
            found = [f for f in self.lines if f[0] == word and where(f)]
        return found[-1] if found else None

    def count(self, word):
        with self.lock:
            return sum(1 for f in self.lines if f[0] == word)

    def first_read_ms(self):
        f = self.last("FIRST")
        return None if f is None else (int(f[1]) - self.spawned) / 1e6

    def switch(self, version):
        return self.last("SWITCH", lambda f: int(f[1]) == version)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.reader.join(timeout=5)


def pss_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def checkins(procs):
    """The processes' check-ins so far, summed: each reports its own on SIGUSR1."""
    seen = [p.count("CHECKINS") for p in procs]
    for p in procs:
        p.p.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: all(p.count("CHECKINS") > n for p, n in zip(procs, seen)),
                    timeout=10)
    return sum(int(p.last("CHECKINS")[2]) for p in procs)


def history(server):
    return {h["version"]: h for h in server.admin("/v1/admin/history?limit=1000")}


def active_version(server):
    d = json.loads(urllib.request.urlopen(server.url + "/v1/checkin?name=bench-judge").read())
    return d.get("sync", d)["active_version"]


def run_mode(args, exe, server, workdir, mode, tag):
    """One mode, one round, with the data server up at the start and down at the end."""
    out = {}
    cache = None
    if mode == "host cache":
        cache = workdir / f"cache-{tag}"
        cache.mkdir(mode=0o700)
    options = f"url={server.url};cache_dir={cache or ''}"
    n = args.processes
    procs = []

    def spawn(name, wait_ms=30_000, count=n):
        batch = [Proc(exe, f"{options};bootstrap_wait_ms={wait_ms};name={name}-{i}")
                 for i in range(count)]
        procs.extend(batch)
        return batch

    try:
        # 1. Cold start.
        cold = active_version(server)
        before = history(server)
        first = spawn("cold")
        assert wait_for(lambda: all(p.last("FIRST") for p in first), timeout=120), \
            [p.lines[-2:] for p in first]
        out["cold_ms"] = [p.first_read_ms() for p in first]

        # 2. A new version; every process switches to it.
        publish_big(server, keys=args.keys, value_bytes=args.value_bytes, tag=tag)
        assert wait_for(lambda: active_version(server) != cold, timeout=60)
        new = active_version(server)
        assert wait_for(lambda: all(p.switch(new) for p in first), timeout=60), \
            [p.lines[-2:] for p in first]
        armed = [int(p.switch(new)[3]) for p in first]
        reads = [int(p.switch(new)[2]) for p in first]
        on_time = [a for a in armed if a]
        out["armed_spread_us"] = ((max(on_time) - min(on_time)) / 1e3 if len(on_time) > 1
                                  else None)
        out["late"] = len(armed) - len(on_time)
        out["read_spread_us"] = (max(reads) - min(reads)) / 1e3

        # 3. Check-ins over quiet cycles.
        time.sleep(1)
        c0 = checkins(first)
        time.sleep(args.quiet_cycles * args.interval_s)
        out["checkins_per_cycle"] = (checkins(first) - c0) / args.quiet_cycles
        out["roles"] = sorted(int(p.last("CHECKINS")[3]) for p in first)

        # 4. Downloads of the two versions (read once the data server has written its counts,
        #    which it does every second).
        after = history(server)
        out["downloads"] = [after[v].get("downloads", 0) - before.get(v, {}).get("downloads", 0)
                            for v in (cold, new)]

        # 5. Memory after the switch.
        out["pss_mb"] = sum(pss_kb(p.p.pid) for p in first) / 1024

        # 6. Warm start: one process alone, then as many as the host has, together.
        one = spawn("warm-one", count=1)
        assert wait_for(lambda: one[0].last("FIRST"), timeout=120)
        out["warm_one_ms"] = [one[0].first_read_ms()]
        warm = spawn("warm")
        assert wait_for(lambda: all(p.last("FIRST") for p in warm), timeout=120)
        out["warm_ms"] = [p.first_read_ms() for p in warm]

        # 7. Data server down.
        server.proc.terminate()
        server.proc.wait()
        one = spawn("down-one", BOOTSTRAP_WAIT_MS, count=1)
        assert wait_for(lambda: one[0].last("FIRST") or one[0].p.poll() is not None, timeout=30)
        out["down_one_ms"] = [one[0].first_read_ms()]
        down = spawn("down", BOOTSTRAP_WAIT_MS)
        assert wait_for(lambda: all(p.last("FIRST") or p.p.poll() is not None for p in down),
                        timeout=30)
        out["down_ms"] = [p.first_read_ms() for p in down]
        out["down_failed"] = sum(1 for p in down if p.last("FIRST") is None)
        out["down_open_ms"] = [(int(p.last("OPEN")[1]) - p.spawned) / 1e6
                               for p in down if p.last("OPEN")]
        down_reported = []
        for p in down:
            if p.p.poll() is None:
                p.p.send_signal(signal.SIGUSR1)
        wait_for(lambda: all(p.last("CHECKINS") or p.p.poll() is not None for p in down),
                 timeout=10)
        for p in down:
            f = p.last("CHECKINS")
            if f:
                down_reported.append(int(f[4]))
        out["down_unconfirmed"] = sum(down_reported)
        return out
    finally:
        for p in procs:
            p.stop()
        if cache:
            shutil.rmtree(cache, ignore_errors=True)


def median(values):
    """The median of the values that are not None, or None."""
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def fmt(values, unit="", digits=1):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return (f.format(statistics.median(values)) + unit + " [" + f.format(min(values)) + "–"
            + f.format(max(values)) + "]")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--value-bytes", type=int, default=1000)
    # Long enough for 16 processes on their own to download 51 MB each inside the retrieval
    # window (half the interval), so that both modes activate on time.
    ap.add_argument("--interval", default="5s", help="the data server's interval, in s")
    ap.add_argument("--quiet-cycles", type=int, default=2)
    args = ap.parse_args()
    args.interval_s = float(args.interval.rstrip("s"))

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "lockstep", "-p",
                    "lockstep-server"], cwd=REPO, check=True)
    workdir = Path(tempfile.mkdtemp(prefix="lockstep-bench-host-"))
    exe = str(workdir / "host_cache")
    libdir = REPO / "target" / "release"
    subprocess.run(["cc", "-O2", "-Wall", f"-I{REPO / 'include'}", str(REPO / "benches" /
                    "host_cache.c"), f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-llockstep", "-o",
                    exe], check=True)
    port = free_port()
    window = f"{args.interval_s / 2:g}s"
    start = lambda: Server(workdir, interval=args.interval, min_window=window,  # noqa: E731
                           listen=f"127.0.0.1:{port}")
    server = start()
    results = {"host cache": [], "per process": []}
    try:
        publish_big(server, keys=args.keys, value_bytes=args.value_bytes, tag="a")
        server.wait_active(KEY, "a" + "x" * (args.value_bytes - 1), timeout=120)
        size = max(h["size"] for h in server.admin("/v1/admin/history"))
        print(f"{args.processes} processes, a version of {size / 1e6:.1f} MB, interval "
              f"{args.interval}, {args.rounds} rounds", flush=True)
        for r in range(args.rounds):
            order = ["host cache", "per process"] if r % 2 == 0 else ["per process", "host cache"]
            for mode in order:
                tag = f"r{r}{'h' if mode == 'host cache' else 'p'}"
                out = run_mode(args, exe, server, workdir, mode, tag)
                results[mode].append(out)
                print(f"round {r + 1} {mode}: " + json.dumps(
                    {k: (median(v) if k.endswith("_ms") else v) for k, v in out.items()}),
                    flush=True)
                server = start()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nmedians of {args.rounds} rounds [min–max over the rounds]; times are each "
          f"round's median over {args.processes} processes")
    for mode, rounds in results.items():
        med = lambda k: [median(o[k]) for o in rounds]  # noqa: E731
        print(f"\n{mode}:")
        print(f"  memory, summed PSS of {args.processes} processes: "
              f"{fmt([o['pss_mb'] for o in rounds], ' MB', 0)} for a {size / 1e6:.0f} MB version")
        print(f"  downloads per version: "
              f"{fmt([sum(o['downloads']) / 2 for o in rounds], '', 1)}")
        print(f"  check-ins per {args.interval} cycle: "
              f"{fmt([o['checkins_per_cycle'] for o in rounds], '', 1)}")
        print(f"  start to first read, data server up, cold host: {fmt(med('cold_ms'), ' ms')}")
        print(f"  start to first read, data server up, warm host: {fmt(med('warm_ms'), ' ms')}"
              f"; one process alone: {fmt(med('warm_one_ms'), ' ms')}")
        failed = [o["down_failed"] for o in rounds]
        print(f"  start to first read, data server down: {fmt(med('down_ms'), ' ms')} "
              f"(one process alone: {fmt(med('down_one_ms'), ' ms')}); "
              f"processes that could not start: {fmt(failed, '', 0)} of {args.processes} "
              f"(sync_open returned after {fmt(med('down_open_ms'), ' ms', 0)}); "
              f"unconfirmed: {fmt([o['down_unconfirmed'] for o in rounds], '', 0)}")
        print(f"  activation spread inside the host: armed instants "
              f"{fmt([o['armed_spread_us'] for o in rounds], ' µs')}, first reads "
              f"{fmt([o['read_spread_us'] for o in rounds], ' µs', 0)}; processes that "
              f"activated late: {fmt([o['late'] for o in rounds], '', 0)}")


if __name__ == "__main__":
    main()
