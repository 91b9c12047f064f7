"""examples/python/app.py under gunicorn --preload with eight workers and a 51 MB version: the
master opens the handle before forking, and the master and its workers are one host (one
download per version, one check-in stream, one copy in memory); during an outage, workers
forked by a reload and a gunicorn started afresh serve the host's version at once; and a
worker forked before a rollback serves what the farm activated."""

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import lockstep
from servers_support import (REPO, CountingProxy, OneHost, Poller, Server, children, free_port,
                             host_cache, http_get, publish_big, read_schedule, wait_for)

WORKERS = 8


def start_gunicorn(workdir, url, cache, port, name="gunicorn", bootstrap_wait=60):
    env = dict(os.environ, LOCKSTEP_SERVER=url, LOCKSTEP_KEYS="price:apple",
               LOCKSTEP_CACHE_DIR=cache, LOCKSTEP_NAME=name,
               LOCKSTEP_BOOTSTRAP_WAIT=str(bootstrap_wait),
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "examples", "python"),
                                           os.environ.get("PYTHONPATH", "")]))
    log = open(workdir / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "-w", str(WORKERS), "-b",
         f"127.0.0.1:{port}", "--graceful-timeout", "5", "app:app"],
        env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse(resp, body):
    if resp.status != 200:
        return None
    d = json.loads(body)
    return {"pid": d["pid"], "version": d["version"], "value": d["value"]}


def every_worker(port, path, want=WORKERS, timeout=60, version=None):
    """Polls until `want` workers answered `path` (each, if given, last with `version`);
    returns {pid: last version}."""
    poller = Poller(port, path, parse, connections=WORKERS)
    last = {}

    def enough():
        for r in poller.snapshot():
            last[r["pid"]] = r["version"]
        return len(last) >= want and (version is None or set(last.values()) == {version})

    try:
        assert wait_for(enough, timeout=timeout), last
    finally:
        poller.stop()
    return last


def test_gunicorn_preload_master_and_workers_are_one_host_one_download_one_checkin_stream_one_copy(
        workdir, big_server):
    server = big_server
    proxy = proc = lone = None
    try:
        proxy = CountingProxy(server.url)
        cache = host_cache(workdir, "root")
        port = free_port()
        proc = start_gunicorn(workdir, proxy.url, cache, port)
        every_worker(port, "/price/price:apple")
        a = server.admin("/v1/admin/status")["sync"]["active_version"]
        lone = lockstep.Client(server.url, name="lone", cache_dir="", bootstrap_wait=60)

        publish_big(server, tag="b")
        server.wait_active("k000000", "b" + "x" * 999, timeout=60)
        b = server.admin("/v1/admin/status")["sync"]["active_version"]
        serving = every_worker(port, "/price/k000001", version=b)

        host = OneHost(proxy, cache, lone)
        host.assert_one_download_per_version([a, b])
        host.assert_checks_in_as_one_client(seconds=4, interval_s=1)
        # The master holds the handle too (it opened it before forking).
        host.assert_one_copy(b, set(serving) | {proc.pid})
        host.assert_farm_view_groups_the_host(server, set(serving) | {proc.pid})
    finally:
        stop(proc)
        if lone:
            lone.close()
        if proxy:
            proxy.stop()
        server.stop()


def test_during_an_outage_reloaded_workers_and_a_new_gunicorn_serve_the_hosts_version_at_once(
        workdir, big_server):
    server = big_server
    proc = fresh = None
    try:
        cache = host_cache(workdir, "root")
        port = free_port()
        # A network wait would be long: 30 s, then an exception that stops gunicorn booting.
        proc = start_gunicorn(workdir, server.url, cache, port, bootstrap_wait=30)
        before = set(every_worker(port, "/price/price:apple"))
        active = server.admin("/v1/admin/status")["sync"]["active_version"]
        server.stop()

        poller = Poller(port, "/price/price:apple", parse, connections=WORKERS)
        time.sleep(1)
        reloaded = time.time_ns() // 1000
        proc.send_signal(signal.SIGHUP)  # new workers forked from the master, old ones retire

        def new_workers():
            return {r["pid"] for r in poller.snapshot()} - before

        assert wait_for(lambda: len(new_workers()) >= WORKERS, timeout=30), \
            open(workdir / "gunicorn.log").read()[-2000:]
        poller.stop()
        records, failures = poller.snapshot(), poller.failed()
        first = {}
        for r in records:
            if r["pid"] not in before:
                first.setdefault(r["pid"], r["received"] - reloaded)
        print(f"{len(records)} requests across the HUP; time from the HUP to each new worker's "
              f"first answer, ms: {sorted(round(t / 1000) for t in first.values())}")
        assert not failures, failures[:5]
        assert {(r["version"], r["value"]) for r in records} == {(active, "1.25")}
        assert max(first.values()) < 5_000_000

        # A gunicorn started afresh during the outage: its master opens the handle from disk.
        port2 = free_port()
        started = time.monotonic()
        fresh = start_gunicorn(workdir, server.url, cache, port2, name="fresh",
                               bootstrap_wait=30)
        assert wait_for(lambda: http_get(port2, "/price/price:apple")[0] == 200, timeout=60), \
            open(workdir / "fresh.log").read()[-2000:]
        took = time.monotonic() - started
        status, _, body = http_get(port2, "/price/price:apple")
        _, _, stats = http_get(port2, "/stats")
        stats = json.loads(stats)
        print(f"a gunicorn started during the outage served {body!r} {took * 1000:.0f} ms after "
              f"it was started (Python, gunicorn and the app's imports included); its stats: "
              f"host_role {stats['host_role']}, unconfirmed {stats['unconfirmed']}, confirmed "
              f"{(time.time() * 1e6 - stats['confirmed_us']) / 1e6:.1f} s ago")
        assert (json.loads(body)["version"], json.loads(body)["value"]) == (active, "1.25")
        assert stats["unconfirmed"] == 1 and stats["confirmed_us"] > 0
        assert took < 15, "the fresh gunicorn waited on the network"
    finally:
        stop(fresh)
        stop(proc)
        server.stop()


def test_a_worker_forked_before_a_rollback_serves_what_the_farm_activated(workdir):
    server = Server(workdir, interval="1s", min_window="500ms")
    proc = None
    try:
        server.put("price:apple", "old")
        server.wait_active("price:apple", "old")
        old = server.admin("/v1/admin/status")["sync"]["active_version"]
        cache = host_cache(workdir, "root")
        port = free_port()
        proc = start_gunicorn(workdir, server.url, cache, port, bootstrap_wait=30)
        every_worker(port, "/price/price:apple")
        # A long cycle, so that the host can download 51 MB twice inside it in a debug build:
        # after the activation due now, the next one is at least the 30 s window away.
        changed = time.time()
        server.admin("/v1/admin/interval", {"interval": "30s", "min_window": "30s"})
        assert wait_for(lambda: server.admin("/v1/admin/status")["sync"]["activation_time_us"]
                        > (changed + 20) * 1e6, timeout=10)
        t = server.admin("/v1/admin/status")["sync"]["activation_time_us"]

        # The 51 MB "new" version: a large edit, then a change scheduled for that activation
        # time, which rebuilds the staged version at once; the host's leader downloads it and
        # arms it.
        marks = [("import", time.time())]
        publish_big(server, tag="n")
        at = datetime.datetime.fromtimestamp(t / 1e6, datetime.timezone.utc)
        server.admin("/v1/admin/put", {"key": "price:apple", "value": "new",
                                       "at": at.isoformat().replace("+00:00", "Z")}, timeout=60)
        marks.append(("imported", time.time()))

        def staged():
            s = read_schedule(cache)
            return s and s["staged"] and s["staged"]["file"]["version"]

        assert wait_for(lambda: (staged() or 0) > old, timeout=30, interval=0.05)
        new = staged()
        assert read_schedule(cache)["staged"]["activation_us"] == t
        marks.append(("armed", time.time()))

        # gunicorn forks fresh workers from the master, which holds "new" armed; they stay
        # idle until after the activation time.
        time.sleep(0.2)  # every process of the host has applied the schedule (50 ms)
        before = set(children(proc.pid))
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: len(set(children(proc.pid)) - before) >= WORKERS, timeout=20)
        forked = set(children(proc.pid)) - before
        marks.append(("forked", time.time()))

        # Rolled back before the activation time: the farm never activates "new".
        server.admin("/v1/admin/rollback", {"version": old, "discard_edits": True},
                     timeout=60)
        marks.append(("rolled back", time.time()))
        print("timeline, s before the activation time:",
              [(m, round(t / 1e6 - at, 1)) for m, at in marks])
        left = t / 1e6 - time.time()
        rolled = server.admin("/v1/admin/status")["sync"]["staged_version"]
        print(f"version {new} armed, workers forked, rolled back to {old} as {rolled} "
              f"{left:.1f} s before the activation time")
        # The leader hears of the rollback at its next check-in (within a quarter interval,
        # 7.5 s) and arms the rollback's version in the schedule; the test needs that before
        # the time.
        assert left > 9, "the machine was too slow for this test's cycle"
        assert wait_for(lambda: staged() == rolled, timeout=max(left - 0.5, 0.1)), \
            f"the host still had {staged()} armed just before the activation time"

        while time.time() < t / 1e6 + 0.3:
            time.sleep(0.01)
        seen = []
        for _ in range(2):
            poller = Poller(port, "/price/price:apple", parse, connections=WORKERS)
            time.sleep(1.5)
            poller.stop()
            seen += poller.snapshot()
            time.sleep(2)
        by_worker = {}
        for r in seen:
            by_worker.setdefault(r["pid"], []).append((r["version"], r["value"]))
        print("versions served by the workers forked before the rollback:",
              {pid: sorted(set(v)) for pid, v in by_worker.items()})
        assert set(by_worker) <= forked and len(by_worker) >= 2, (by_worker, forked)
        assert all(v != new and value == "old" for r in by_worker.values() for v, value in r), \
            f"a worker served version {new}, which the farm never activated"
        history = {h["version"]: h for h in server.admin("/v1/admin/history")}
        assert not history[new].get("activated_us"), history[new]
        assert history[rolled].get("activated_us") == t
    finally:
        stop(proc)
        server.stop()
