#!/usr/bin/env python3
"""The rotating check-in at the activation time T, with the next version stored ahead of T
against encoded at T, interleaved over ROUNDS rounds on one data server (SQLite by default, or
DB=postgres://...).

A: one edit made just after the previous rotation: the data server encodes and stores the
   next version ahead of T, and the rotation at T writes a row naming it.
B: one edit made 0.3 s before T: what was built ahead no longer holds, so the rotation at T
   encodes and writes the whole version while every other check-in waits.

Each round sends one check-in 5 ms after T and times it from send to the end of its answer
(the rotating check-in), and checks from the history which way the version was stored.
Prints medians (min-max) per variant. KEYS (default 1000000) keys of about 40 bytes each;
INTERVAL (default 10s) the cycle, long enough for a build of KEYS keys.

Needs a release build: cargo build --release -p lockstep-server.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

KEYS = int(os.environ.get("KEYS", "1000000"))
INTERVAL = os.environ.get("INTERVAL", "10s")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "lockstep")
TOKEN = "bench"


def request(url, body=None, token=None, stamps=None):
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as r:
        if stamps is not None:
            received = int(r.headers["x-lockstep-server-received-us"])
            stamps.append(int(r.headers["x-lockstep-server-time-us"]) - received)
        return json.loads(r.read())


def main():
    tmp = tempfile.mkdtemp()
    db = os.environ.get("DB", os.path.join(tmp, "db"))
    server = subprocess.Popen(
        [BIN, "serve", "--db", db, "--listen", "127.0.0.1:0", "--interval", INTERVAL,
         "--min-window", "5s", "--max-body-bytes", str(256 << 20)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "LOCKSTEP_ADMIN_TOKEN": TOKEN},
    )
    try:
        url = server.stdout.readline().decode().split()[-1]
        while True:
            try:
                request(f"{url}/v1/ready")
                break
            except Exception:
                time.sleep(0.2)
        entries = [{"key": f"key:{i:08}", "value": f"value {i} " + "x" * 20} for i in range(KEYS)]
        request(f"{url}/v1/admin/import", json.dumps({"entries": entries}).encode(), TOKEN)
        del entries
        results = {"A": [], "B": []}
        order = ["A", "B"] * ROUNDS
        for n, variant in enumerate(["A"] + order):
            sync = request(f"{url}/v1/checkin?name=bench")
            t = sync["activation_time_us"] / 1e6
            if n == 0:  # the rounds begin just after a rotation
                time.sleep(max(0, t - time.time()) + 0.05)
                sync = request(f"{url}/v1/checkin?name=bench")
                t = sync["activation_time_us"] / 1e6
            edit_at = time.time() if variant == "A" else t - 0.3
            time.sleep(max(0, edit_at - time.time()))
            body = json.dumps({"key": "key:00000000", "value": f"round {n}"}).encode()
            request(f"{url}/v1/admin/put", body, TOKEN)
            time.sleep(max(0, t + 0.005 - time.time()))
            start = time.perf_counter()
            inside = []
            answer = request(f"{url}/v1/checkin?name=bench", stamps=inside)
            took = time.perf_counter() - start
            if not answer.get("rotated"):
                print(f"round {n}: another check-in rotated", file=sys.stderr)
                continue
            row = request(f"{url}/v1/admin/history?limit=1", token=TOKEN)[0]
            ahead = "stored_ahead_us" in row
            if n == 0:
                continue  # warm-up
            print(f"{variant}: {took * 1000:.1f} ms ({inside[0] / 1000:.1f} in the server), "
                  f"version {row['version']} "
                  f"({row['size']} bytes) {'stored ahead' if ahead else 'encoded at T'}")
            results[variant].append((took, ahead))
        for variant, runs in results.items():
            ms = [t * 1000 for t, _ in runs]
            ahead = sum(a for _, a in runs)
            if ms:
                print(f"{variant}: rotating check-in {statistics.median(ms):.1f} ms "
                      f"({min(ms):.1f}-{max(ms):.1f}), {ahead}/{len(ms)} stored ahead, "
                      f"{KEYS} keys")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
