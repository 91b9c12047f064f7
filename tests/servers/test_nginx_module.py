"""The nginx dynamic module inside real nginx with four workers."""

import os
import time
import urllib.error
import urllib.request

from servers_support import (REPO, Daemon, Poller, Server, edit_and_watch_every_worker_switch,
                      free_port, host_cache, render, wait_for)

MODULE = os.path.join(REPO, "target", "nginx-module", "ngx_http_lockstep_module.so")
TEMPLATE = os.path.join(REPO, "bindings", "nginx", "example", "nginx.conf")


def start_nginx(nginx_bin, workdir, url, port):
    (workdir / "static.txt").write_text("1.25")
    os.chmod(workdir / "static.txt", 0o644)
    # Workers of a root master run as nobody (nginx's default user).
    cache = host_cache(workdir, "nobody")
    conf = render(TEMPLATE, workdir / "nginx.conf", MODULE=MODULE, DIR=workdir, PORT=port, URL=url,
                  CACHE=cache)
    d = Daemon([nginx_bin, "-c", str(conf), "-p", str(workdir)], workdir / "nginx.out")
    assert wait_for(lambda: fetch(port, "/version")[0] == 200, timeout=20), \
        open(workdir / "nginx-error.log").read()
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
