"""The PHP extension inside real PHP-FPM (four workers) behind real nginx."""

import json
import os

from servers_support import (REPO, Daemon, Poller, Server, edit_and_watch_every_worker_switch,
                      free_port, host_cache, render, wait_for)

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
                          CACHE=host_cache(workdir, "root"))
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
