#!/usr/bin/env python3
"""Driver of benches/longpoll.sh: N long-poll check-ins held by a real `lockstep serve`.

usage: longpoll.py URL SERVER_PID N ROUNDS

Each round, interleaved: the data server's CPU and RSS with no check-in held (A), then with N
held (B: N connections, each a check-in with wait_ms=55000 and the current ETag, counted held
by the server's lockstep_held_checkins); then one change of the sync table (the interval,
alternately 5 and 10 minutes) and the time from sending that change until each of the N
answers' status line arrives (p50, p99, max). Odd rounds measure A after closing the
connections instead of before opening them. One asyncio event loop reads all N answers, so
the wake-up times include this client's own reading. Prints medians (min-max) over rounds.
"""
import asyncio
import json
import os
import resource
import statistics
import sys
import time
import urllib.request

URL, PID, N, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
HOST, PORT = URL.split("//")[1].split(":")
PORT = int(PORT)
TOKEN = os.environ.get("LOCKSTEP_ADMIN_TOKEN", "bench")
WINDOW = float(os.environ.get("WINDOW", "3"))
HZ = os.sysconf("SC_CLK_TCK")


def rss_mb():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s():
    with open(f"/proc/{PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def held():
    with urllib.request.urlopen(f"{URL}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("lockstep_held_checkins "):
                return int(line.split()[1])
    raise RuntimeError("no lockstep_held_checkins")


def etag():
    with urllib.request.urlopen(f"{URL}/v1/checkin?name=bench") as r:
        return r.headers["ETag"]


def change(i):
    body = json.dumps({"interval": "5m" if i % 2 == 0 else "10m"}).encode()
    req = urllib.request.Request(
        f"{URL}/v1/admin/interval",
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        r.read()


async def window():
    """Server CPU (% of one core) over WINDOW seconds, and RSS after it."""
    c0, t0 = cpu_s(), time.monotonic()
    await asyncio.sleep(WINDOW)
    return 100 * (cpu_s() - c0) / (time.monotonic() - t0), rss_mb()


async def hold(i, tag, answered):
    r, w = await asyncio.open_connection(HOST, PORT)
    w.write(
        (
            f"GET /v1/checkin?name=lp{i}&host=bench{i % 100}&wait_ms=55000 HTTP/1.1\r\n"
            f"Host: {HOST}\r\nIf-None-Match: {tag}\r\n\r\n"
        ).encode()
    )
    await w.drain()
    status = await r.readline()
    at = time.monotonic()
    length, was_held = 0, False
    while True:
        line = await r.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
        if k.lower() == "x-lockstep-held":
            was_held = True
    await r.readexactly(length)
    answered[i] = (at, status.split()[1], was_held)
    return w


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    # Memory a process has touched mostly stays with it after the connections close: the
    # per-waiter figure is taken against the server as it was before any was held.
    fresh = rss_mb()
    for rnd in range(ROUNDS + 1):
        answered = {}
        if rnd % 2 == 0:
            idle = await window()
        tag = etag()
        tasks = []
        for i in range(N):
            tasks.append(asyncio.ensure_future(hold(i, tag, answered)))
            if i % 200 == 199:
                await asyncio.sleep(0.02)
        deadline = time.monotonic() + 120
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, held) < N:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {held()} of {N} held")
            await asyncio.sleep(0.2)
        busy = await window()
        t0 = time.monotonic()
        await loop.run_in_executor(None, change, rnd)
        writers = await asyncio.gather(*tasks)
        waits = sorted((at - t0) * 1000 for at, _, _ in answered.values())
        bad = [(s, h) for _, s, h in answered.values() if s != b"200" or not h]
        if bad:
            raise SystemExit(f"{len(bad)} answers not a held 200: {bad[:3]}")
        for w in writers:
            w.close()
        await asyncio.sleep(1)
        if rnd % 2 == 1:
            idle = await window()
        row = {
            "rss_idle": idle[1],
            "rss_held": busy[1],
            "kb_per_waiter": (busy[1] - fresh) * 1024 / N,
            "cpu_idle": idle[0],
            "cpu_held": busy[0],
            "p50": waits[len(waits) // 2],
            "p99": waits[int(len(waits) * 0.99) - 1],
            "max": waits[-1],
        }
        label = "warm-up (not counted)" if rnd == 0 else f"round {rnd}"
        print(label, " ".join(f"{k}={v:.1f}" for k, v in row.items()), flush=True)
        if rnd > 0:
            rows.append(row)

    def med(k):
        v = [r[k] for r in rows]
        return f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]"

    print(f"\n{N} held long-poll check-ins, medians [min-max] over {len(rows)} rounds:")
    print(f"  data server RSS: {fresh:.1f} MB before any was held, {med('rss_held')} MB with them "
          f"held ({med('kb_per_waiter')} kB per held check-in), {med('rss_idle')} MB between rounds")
    print(f"  data server CPU: {med('cpu_idle')} % of a core idle, {med('cpu_held')} % with them held")
    print(f"  wake-up, change sent -> answer's status line read: p50 {med('p50')} ms, "
          f"p99 {med('p99')} ms, max {med('max')} ms")


asyncio.run(main())
