"""The PHP extension inside real PHP-FPM behind real nginx: four workers switching together,
and eight workers recycled every 20 requests sharing one host cache."""

import json
import os
import time

import lockstep
from servers_support import (REPO, CountingProxy, Daemon, OneHost, Poller, Server,
                             edit_and_watch_every_worker_switch, free_port, get_many, host_cache,
                             publish_big, render, wait_for)

EXT = os.path.join(REPO, "target", "php-ext", "modules", "lockstep.so")
EXAMPLE = os.path.join(REPO, "bindings", "php", "example")


def tail(path, lines=5):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return str(e)


def parse(resp, body):
    if resp.status != 200:
        return None
    d = json.loads(body)
    return {"pid": d["pid"], "version": d["version"], "value": d["value"],
            "last_activation_us": d["last_activation_us"]}


def test_an_edit_goes_live_in_every_fpm_worker_at_the_activation_time(nginx_bin, workdir):
    server = Server(workdir, interval="1s", min_window="500ms")
    fpm = nginx = None
    try:
        server.put("price:apple", "1.25")
        server.wait_active("price:apple", "1.25")
        fpm_conf = render(os.path.join(EXAMPLE, "php-fpm.conf"), workdir / "php-fpm.conf",
                          DIR=workdir, URL=server.url, USER="root", GROUP="root",
                          CACHE=host_cache(workdir, "root"), WORKERS=4, MAX_REQUESTS=0)
        fpm = Daemon(["php-fpm8.2", "-R", "-F", "-d", f"extension={EXT}", "-y", str(fpm_conf),
                      "-p", str(workdir)],
                     workdir / "fpm.out")
        assert wait_for(lambda: os.path.exists(workdir / "php-fpm.sock"), timeout=20), \
            open(workdir / "fpm.out").read()
        port = free_port()
        nginx_conf = render(os.path.join(EXAMPLE, "nginx.conf"), workdir / "nginx.conf",
                            DIR=workdir, PORT=port, ROOT=EXAMPLE)
        nginx = Daemon([nginx_bin, "-c", str(nginx_conf), "-p", str(workdir)], workdir / "nginx.out")
        poller = Poller(port, "/?key=price:apple", parse)
        assert wait_for(lambda: len({r["pid"] for r in poller.snapshot()}) >= 4, timeout=30), \
            (tail(workdir / "php-fpm.log"), tail(workdir / "nginx-error.log"), poller.snapshot()[:3])
        records, t = edit_and_watch_every_worker_switch(server, poller, "0.99", workers=4)
        # Each worker's own library activated it on time, at the same activation time.
        last = {r["pid"]: r["last_activation_us"] for r in records if r["value"] == "0.99"}
        assert set(last.values()) == {t}, last
        farm = server.admin("/v1/admin/status")["farm"]
        assert len([m for m in farm if m["name"].startswith("php-fpm-")]) >= 4
    finally:
        for d in (nginx, fpm):
            if d:
                d.stop()
        server.stop()


# --- The host cache under PHP-FPM: 8 workers recycled every 20 requests, a 51 MB version ---

USER = "www-data"  # the workers' user; the master runs as root


def start_fpm(workdir, url, cache, workers=8, max_requests=20):
    conf = render(os.path.join(EXAMPLE, "php-fpm.conf"), workdir / "php-fpm.conf",
                  DIR=workdir, URL=url, USER=USER, GROUP=USER, CACHE=cache, WORKERS=workers,
                  MAX_REQUESTS=max_requests)
    fpm = Daemon(["php-fpm8.2", "-F", "-d", f"extension={EXT}", "-y", str(conf),
                  "-p", str(workdir)], workdir / "fpm.out")
    assert wait_for(lambda: os.path.exists(workdir / "php-fpm.sock"), timeout=20), \
        open(workdir / "fpm.out").read()
    return fpm


def start_front(nginx_bin, workdir):
    port = free_port()
    conf = render(os.path.join(EXAMPLE, "nginx.conf"), workdir / "nginx.conf",
                  DIR=workdir, PORT=port, ROOT=EXAMPLE)
    return Daemon([nginx_bin, "-c", str(conf), "-p", str(workdir)], workdir / "nginx.out"), port


def answers(results):
    """The JSON of 200 answers; the others as (status, body)."""
    ok, failed = [], []
    for status, _, body in results:
        if status == 200:
            ok.append(json.loads(body))
        else:
            failed.append((status, body[:300]))
    return ok, failed


def warm(port, workdir, workers):
    """Requests until `workers` different workers have answered; returns their pids. A cold
    host's first requests may fail: the first worker downloads the version for the host."""
    pids = set()

    def enough():
        ok, _ = answers(get_many(port, "/?key=price:apple", 16, concurrency=8))
        pids.update(a["pid"] for a in ok)
        return len(pids) >= workers

    assert wait_for(enough, timeout=90, interval=0.2), \
        (pids, tail(workdir / "php-fpm.log"), tail(workdir / "nginx-error.log"))
    return pids


def test_recycled_fpm_workers_are_one_host_one_download_per_version_one_checkin_stream_one_copy(
        nginx_bin, workdir, big_server):
    server = big_server
    proxy = fpm = front = lone = None
    try:
        proxy = CountingProxy(server.url)
        cache = host_cache(workdir, USER)
        fpm = start_fpm(workdir, proxy.url, cache)
        front, port = start_front(nginx_bin, workdir)
        warm(port, workdir, 8)
        a = server.admin("/v1/admin/status")["sync"]["active_version"]
        lone = lockstep.Client(server.url, name="lone", cache_dir="", bootstrap_wait=60)

        # A new 51 MB version while the host is quiet; then traffic that recycles workers.
        publish_big(server, tag="b")
        server.wait_active("k000000", "b" + "x" * 999, timeout=60)
        b = server.admin("/v1/admin/status")["sync"]["active_version"]
        # Workers holding a handle map and verify the new file themselves (seconds each for
        # 51 MB in a debug build): wait until they all serve it.
        assert wait_for(lambda: {a["version"] for a in answers(
            get_many(port, "/?key=k000001", 32, concurrency=8))[0]} == {b}, timeout=60)
        ok, failed = answers(get_many(port, "/?key=k000001", 120, concurrency=4))
        assert not failed, failed[:3]
        assert {(x["version"], x["value"][:1]) for x in ok} == {(b, "b")}
        print(f"{len({x['pid'] for x in ok})} workers served 120 requests "
              f"(pm.max_requests = 20: some of them started during the traffic)")

        host = OneHost(proxy, cache, lone)
        host.assert_one_download_per_version([a, b])
        host.assert_checks_in_as_one_client(seconds=4, interval_s=1)
        host.assert_one_copy(b, {x["pid"] for x in ok[-40:]})
        host.assert_farm_view_groups_the_host(server, {x["pid"] for x in ok[-40:]})
    finally:
        for d in (front, fpm):
            if d:
                d.stop()
        if lone:
            lone.close()
        if proxy:
            proxy.stop()
        server.stop()


def test_fpm_workers_recycled_while_the_data_server_is_down_serve_the_hosts_version_at_once(
        nginx_bin, workdir, big_server):
    server = big_server
    fpm = front = None
    try:
        cache = host_cache(workdir, USER)
        fpm = start_fpm(workdir, server.url, cache)
        front, port = start_front(nginx_bin, workdir)
        before = warm(port, workdir, 8)
        active = server.admin("/v1/admin/status")["sync"]["active_version"]
        server.stop()
        time.sleep(1)

        # 240 requests: every worker passes pm.max_requests, most of them twice.
        ok, failed = answers(get_many(port, "/?key=price:apple", 240, concurrency=4))
        assert not failed, failed[:3]
        assert {(x["version"], x["value"]) for x in ok} == {(active, "1.25")}
        first = {}
        for x in ok:
            if x["pid"] not in before:
                first.setdefault(x["pid"], x)
        times = sorted(x["read_ms"] for x in first.values())
        print(f"{len(first)} workers started during the outage; time from a new worker's "
              f"first request to its first read (opening from the host cache included), ms: "
              f"median {times[len(times) // 2]:.1f}, max {times[-1]:.1f}; "
              f"unconfirmed: {sorted({str(x['unconfirmed']) for x in first.values()})}")
        assert len(first) >= 8, "workers were not recycled"
        # A worker opening without the host cache would wait bootstrap_wait_ms (5000 here)
        # and throw: every request succeeded. Opening from the host cache verifies the 51 MB
        # file, which takes a second or more in a debug build on a busy machine (tens of ms
        # in a release build), hence the generous bound.
        assert times[-1] < 15_000
    finally:
        for d in (front, fpm):
            if d:
                d.stop()
        server.stop()
