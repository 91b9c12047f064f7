"""The nginx dynamic module inside real nginx with four workers: switching together, serving
through an outage, and sharing one host cache (one download, one check-in stream, one copy of
a 51 MB version, and new workers serving from it at once across `nginx -s reload`)."""

import json
import os
import signal
import time
import urllib.error
import urllib.request

import lockstep
from servers_support import (REPO, CountingProxy, Daemon, OneHost, Poller, Server,
                             edit_and_watch_every_worker_switch, free_port, host_cache, publish_big,
                             render, wait_for)

MODULE = os.path.join(REPO, "target", "nginx-module", "ngx_http_lockstep_module.so")
TEMPLATE = os.path.join(REPO, "bindings", "nginx", "example", "nginx.conf")


def start_nginx(nginx_bin, workdir, url, port, cache=None, conf_dir=None):
    """nginx from the example configuration, its files in `conf_dir` (default: workdir), its
    host cache `cache` (default: a new one in workdir)."""
    conf_dir = conf_dir or workdir
    conf_dir.mkdir(exist_ok=True)
    os.chmod(conf_dir, 0o755)
    (conf_dir / "static.txt").write_text("1.25")
    os.chmod(conf_dir / "static.txt", 0o644)
    # Workers of a root master run as nobody (nginx's default user).
    cache = cache or host_cache(workdir, "nobody")
    conf = render(TEMPLATE, conf_dir / "nginx.conf", MODULE=MODULE, DIR=conf_dir, PORT=port,
                  URL=url, CACHE=cache)
    d = Daemon([nginx_bin, "-c", str(conf), "-p", str(conf_dir)], conf_dir / "nginx.out")
    assert wait_for(lambda: fetch(port, "/version")[0] == 200, timeout=20), \
        open(conf_dir / "nginx-error.log").read()
    return d


def fetch(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
    except OSError:
        return 0, b"", {}


def parse(resp, body):
    if resp.status != 200:
        return None
    return {"pid": resp.getheader("X-Worker"), "version": int(resp.getheader("X-Lockstep-Version")),
            "value": body.decode()}


def test_an_edit_goes_live_in_every_worker_at_the_activation_time(nginx_bin, workdir):
    server = Server(workdir, interval="1s", min_window="500ms")
    nginx = None
    try:
        server.put("price:apple", "1.25")
        server.wait_active("price:apple", "1.25")
        port = free_port()
        nginx = start_nginx(nginx_bin, workdir, server.url, port)
        status, body, headers = fetch(port, "/prices/price:apple")
        assert (status, body) == (200, b"1.25")
        poller = Poller(port, "/prices/price:apple", parse)
        assert wait_for(lambda: len({r["pid"] for r in poller.snapshot()}) >= 4, timeout=20)
        edit_and_watch_every_worker_switch(server, poller, "0.99", workers=4)
        # Every worker is in the farm view, under its own pid.
        farm = server.admin("/v1/admin/status")["farm"]
        assert len([m for m in farm if m["name"].startswith("nginx-")]) >= 4
    finally:
        if nginx:
            nginx.stop()
        server.stop()


def test_missing_key_is_404_and_values_survive_the_data_server_going_down(nginx_bin, workdir):
    server = Server(workdir)
    nginx = None
    try:
        server.put("price:pear", "2.10")
        server.wait_active("price:pear", "2.10")
        port = free_port()
        nginx = start_nginx(nginx_bin, workdir, server.url, port)
        assert fetch(port, "/prices/nope")[0] == 404
        assert fetch(port, "/prices/")[0] == 404
        server.stop()
        time.sleep(1.5)  # several 200 ms cycles without a data server
        for _ in range(40):  # every worker, whichever answers
            status, body, headers = fetch(port, "/prices/price:pear")
            assert (status, body) == (200, b"2.10")
            assert int(headers["X-Lockstep-Version"]) >= 2
        assert fetch(port, "/prices/nope")[0] == 404
    finally:
        if nginx:
            nginx.stop()
        server.stop()


def test_variables_and_the_status_location_show_each_workers_handle(nginx_bin, workdir):
    server = Server(workdir, interval="1s", min_window="500ms")
    nginx = None
    try:
        # Enough other keys that the edit below travels as a delta (a one-key version is
        # smaller whole than any delta, and the data server offers none).
        server.admin("/v1/admin/import", {"entries": [
            {"key": f"filler:{i:04}", "value": f"value {i}"} for i in range(300)]})
        server.put("price:apple", "1.25")
        server.wait_active("price:apple", "1.25")
        port = free_port()
        nginx = start_nginx(nginx_bin, workdir, server.url, port)
        seen = {}
        deadline = time.time() + 20
        while len(seen) < 4 and time.time() < deadline:  # every worker, whichever answers
            status, body, _ = fetch(port, "/vars")
            assert status == 200, body
            fields = dict(f.split("=", 1) for f in body.decode().split())
            seen[fields["pid"]] = fields
        assert len(seen) == 4, seen
        active = json.loads(urllib.request.urlopen(server.url + "/v1/checkin?name=t",
                                                   timeout=5).read())["active_version"]
        now_us = time.time() * 1e6
        for fields in seen.values():
            assert abs(int(fields["active"]) - active) <= 1, (fields, active)
            assert int(fields["staged"]) >= 0
            assert fields["lagging"] == "0"
            # µs on the data server's clock (this host's): within the last few seconds.
            assert now_us - 10e6 < int(fields["last_checkin"]) <= now_us + 1e6, fields

        # An edit is staged, then activated: while it waits, workers show it staged and the
        # version before it active, never the other way round.
        server.put("price:apple", "0.99")
        staged_seen = []
        deadline = time.time() + 20
        while time.time() < deadline:
            fields = dict(f.split("=", 1) for f in fetch(port, "/vars")[1].decode().split())
            active_now, staged_now = int(fields["active"]), int(fields["staged"])
            assert staged_now == 0 or staged_now >= active_now, fields
            if staged_now > active_now:
                staged_seen.append((active_now, staged_now))
            if fetch(port, "/prices/price:apple")[1] == b"0.99" and staged_seen:
                break
            time.sleep(0.005)
        assert staged_seen, "no worker ever showed the edit staged"
        assert all(st == ac + 1 for ac, st in staged_seen), staged_seen

        # A second edit, so that the leader's two counters differ.
        server.put("price:apple", "0.98")
        assert wait_for(lambda: all(fetch(port, "/prices/price:apple")[1] == b"0.98"
                                    for _ in range(8)), timeout=20)
        by_role = {}
        for _ in range(200):  # every worker answers in turn: the leader, and a follower
            status, body, headers = fetch(port, "/lockstep-status")
            assert status == 200 and headers["Content-Type"] == "application/json"
            stats = json.loads(body)
            assert stats["host_role"] in (1, 2), stats
            by_role[stats["host_role"]] = stats
            if len(by_role) == 2:
                break
        assert set(by_role) == {1, 2}, by_role
        for stats in by_role.values():
            assert stats["pid"] > 0 and stats["checkins"] >= 0
            assert stats["active_version"] >= active - 1 and stats["lagging"] is False
            assert stats["last_error"] == ""
        # Transfer counters. The leader downloaded the version active when nginx started
        # whole, and the two edits as deltas; a follower reads the leader's files and
        # downloads nothing itself.
        leader, follower = by_role[1], by_role[2]
        assert (leader["full_downloads"], leader["deltas_applied"]) == (1, 2), leader
        assert leader["bytes_downloaded"] > 0, leader
        assert (follower["full_downloads"], follower["deltas_applied"],
                follower["bytes_downloaded"]) == (0, 0, 0), follower

        # The data server goes away: the leader's status says why, as valid JSON.
        server.stop()

        def leader_failing():
            for _ in range(8):
                st = json.loads(fetch(port, "/lockstep-status")[1] or b"{}")
                if st.get("consecutive_failures", 0) > 0 and st.get("last_error"):
                    return st
            return None
        failing = wait_for(leader_failing, timeout=20)
        assert failing and "check-in" in failing["last_error"], failing
        assert failing["active_version"] >= active - 1  # still serving
    finally:
        if nginx:
            nginx.stop()
        server.stop()


# --- The host cache in nginx: four workers, a 51 MB version ---

def parse_any(resp, body):
    return {"pid": resp.getheader("X-Worker"), "status": resp.status,
            "version": int(resp.getheader("X-Lockstep-Version") or 0), "value": body[:64]}


def workers_serving(port, path, want, timeout):
    """Polls until `want` different workers answered `path`; their pids and versions."""
    poller = Poller(port, path, parse_any, connections=8)
    try:
        assert wait_for(lambda: len({r["pid"] for r in poller.snapshot()}) >= want,
                        timeout=timeout), poller.snapshot()[-3:]
    finally:
        poller.stop()
    return poller


def test_nginx_workers_are_one_host_one_download_per_version_one_checkin_stream_one_copy(
        nginx_bin, workdir, big_server):
    server = big_server
    proxy = nginx = lone = None
    try:
        proxy = CountingProxy(server.url)
        cache = host_cache(workdir, "nobody")
        port = free_port()
        nginx = start_nginx(nginx_bin, workdir, proxy.url, port, cache=cache)
        workers_serving(port, "/prices/price:apple", 4, timeout=60)
        a = server.admin("/v1/admin/status")["sync"]["active_version"]
        lone = lockstep.Client(server.url, name="lone", cache_dir="", bootstrap_wait=60)

        publish_big(server, tag="b")
        server.wait_active("k000000", "b" + "x" * 999, timeout=60)
        b = server.admin("/v1/admin/status")["sync"]["active_version"]

        def all_on_b():
            p = workers_serving(port, "/prices/k000001", 4, timeout=20)
            recent = {}
            for r in p.snapshot():
                recent[r["pid"]] = r["version"]
            return set(recent.values()) == {b} and recent

        serving = wait_for(all_on_b, timeout=60)
        assert serving, "not every worker switched to the new version"

        host = OneHost(proxy, cache, lone)
        host.assert_one_download_per_version([a, b])
        host.assert_checks_in_as_one_client(seconds=4, interval_s=1)
        host.assert_one_copy(b, [int(p) for p in serving])
        host.assert_farm_view_groups_the_host(server, [int(p) for p in serving])
    finally:
        if nginx:
            nginx.stop()
        if lone:
            lone.close()
        if proxy:
            proxy.stop()
        server.stop()


def test_nginx_reload_and_a_new_nginx_during_an_outage_serve_the_hosts_version_without_a_503(
        nginx_bin, workdir, big_server):
    server = big_server
    nginx = second = None
    try:
        cache = host_cache(workdir, "nobody")
        port = free_port()
        nginx = start_nginx(nginx_bin, workdir, server.url, port, cache=cache)
        before = {r["pid"] for r in workers_serving(port, "/prices/price:apple", 4, 60).snapshot()}
        active = server.admin("/v1/admin/status")["sync"]["active_version"]
        server.stop()

        poller = Poller(port, "/prices/price:apple", parse_any)
        time.sleep(1)
        reloaded = time.time_ns() // 1000
        os.kill(nginx.proc.pid, signal.SIGHUP)  # nginx -s reload

        def new_workers():
            return {r["pid"] for r in poller.snapshot()} - before

        assert wait_for(lambda: len(new_workers()) >= 4, timeout=30), \
            open(workdir / "nginx-error.log").read()[-2000:]
        time.sleep(0.5)
        poller.stop()
        records, failures = poller.snapshot(), poller.failed()
        first = {}
        for r in records:
            if r["pid"] not in before:
                first.setdefault(r["pid"], r["received"] - reloaded)
        print(f"{len(records)} requests across the reload; time from the reload to each new "
              f"worker's first answer, ms: {sorted(round(t / 1000) for t in first.values())}")
        assert not failures, failures[:5]
        assert {(r["status"], r["version"], r["value"]) for r in records} == \
            {(200, active, b"1.25")}
        # A new worker waiting on the network would take lockstep_bootstrap_wait (5 s), then
        # answer 503 for as long as the outage lasts: there was none. Opening from the host
        # cache verifies the 51 MB file, which takes seconds in a debug build with four
        # workers doing it at once on two cores (tens of ms in a release build), hence the
        # generous bound.
        assert max(first.values()) < 15_000_000

        # A second nginx, started during the outage, on the same host cache.
        port2 = free_port()
        started = time.monotonic()
        second = start_nginx(nginx_bin, workdir, server.url, port2, cache=cache,
                             conf_dir=workdir / "second")
        status, body, headers = fetch(port2, "/prices/price:apple")
        took = time.monotonic() - started
        print(f"a new nginx started during the outage answered {status} {body!r} "
              f"{took * 1000:.0f} ms after it was started")
        assert (status, body, int(headers["X-Lockstep-Version"])) == (200, b"1.25", active)
        assert took < 15
    finally:
        for d in (second, nginx):
            if d:
                d.stop()
        server.stop()


def test_a_refused_token_is_logged_once_per_worker_and_clearly_never_as_unreachable(
        nginx_bin, workdir):
    server = Server(workdir, env={"LOCKSTEP_READ_TOKEN": "nginx-read-token"})
    try:
        server.put("price:apple", "1.25")
        port = free_port()
        conf = render(TEMPLATE, workdir / "nginx.conf", MODULE=MODULE, DIR=workdir, PORT=port,
                      URL=server.url, CACHE=host_cache(workdir, "nobody"))
        text = conf.read_text().replace("lockstep_bootstrap_wait 5s;",
                                        "lockstep_bootstrap_wait 1s; lockstep_token wrong;")
        conf.write_text(text)
        d = Daemon([nginx_bin, "-c", str(conf), "-p", str(workdir)], workdir / "nginx.out")
        try:
            assert wait_for(lambda: fetch(port, "/version")[0] == 200, timeout=20)
            for _ in range(40):
                assert fetch(port, "/prices/price:apple")[0] == 503
            log = (workdir / "nginx-error.log").read_text()
            refused = [line for line in log.splitlines()
                       if "refused lockstep_token" in line]
            # Four workers, each says it once, with the data server's status.
            assert 1 <= len(refused) <= 4, log
            assert all("401" in line or "403" in line for line in refused), log
            assert "unreachable" not in log, log
        finally:
            d.stop()
    finally:
        server.stop()


def test_nginx_over_https_with_lockstep_ca_file_and_another_ca_refused(nginx_bin, workdir):
    from pki import make_ca
    ca, cert, key = make_ca(workdir / "pki", "farm")
    other_ca, _, _ = make_ca(workdir / "pki", "other")
    for f in os.listdir(workdir / "pki"):
        os.chmod(workdir / "pki" / f, 0o644)  # the workers run as nobody
    os.chmod(workdir / "pki", 0o755)
    # The data server serves HTTPS itself (--tls-cert/--tls-key), no proxy in front.
    server = Server(workdir, tls=(cert, key, ca))
    try:
        server.put("price:apple", "1.25")
        server.wait_active("price:apple", "1.25")
        for name, ca_file, expect in (("right", ca, 200), ("wrong", other_ca, 503)):
            conf_dir = workdir / name
            conf_dir.mkdir()
            port = free_port()
            conf = render(TEMPLATE, conf_dir / "nginx.conf", MODULE=MODULE, DIR=conf_dir,
                          PORT=port, URL=server.url, CACHE=host_cache(conf_dir, "nobody"))
            conf.write_text(conf.read_text().replace(
                "lockstep_bootstrap_wait 5s;",
                f"lockstep_bootstrap_wait 5s; lockstep_ca_file {ca_file};"))
            os.chmod(conf_dir, 0o755)
            d = Daemon([nginx_bin, "-c", str(conf), "-p", str(conf_dir)], conf_dir / "nginx.out")
            try:
                assert wait_for(lambda: fetch(port, "/version")[0] == 200, timeout=20)
                status, body, _ = fetch(port, "/prices/price:apple")
                assert status == expect, (name, status, body,
                                          (conf_dir / "nginx-error.log").read_text()[-2000:])
                if expect == 200:
                    assert body == b"1.25"
                else:
                    # The host cache's leader is the worker that met the certificate; the
                    # others follow it and have no error of their own.
                    assert wait_for(lambda: b"certificate" in
                                    fetch(port, "/lockstep-status")[1].lower(), timeout=15), \
                        (conf_dir / "nginx-error.log").read_text()[-3000:]
            finally:
                d.stop()
    finally:
        server.stop()
