"""Fan-out through a standard HTTP cache: a real nginx with proxy_cache between several client
processes (Python clients and the workers of an nginx with the lockstep module, each on its
own, no host cache, so each downloads) and one `lockstep serve`. The
data server serves each blob once; every client activates the version the farm did, verified
against the announced checksum; blob URLs need no token while check-ins do; a wrong key is 404.
"""

import collections
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from servers_support import REPO, Daemon, Server, free_port, wait_for

READ = "blob-cache-read-token"
CLIENTS = 4

NGINX_CONF = """
worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  log_format blob '$request_uri $status $upstream_cache_status auth=$http_authorization';
  access_log {dir}/access.log blob;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=blobs:1m max_size=1g inactive=1d
                   use_temp_path=off;
  server {{
    listen 127.0.0.1:{port};
    # Only blobs and deltas: check-ins stay on the data servers.
    location ~ ^/v1/(blobs|deltas)/ {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_cache blobs;
      # Misses for one URL wait for the first, so the data server sees one request per blob.
      proxy_cache_lock on;
      proxy_cache_lock_timeout 60s;
      proxy_cache_lock_age 60s;
      add_header X-Cache $upstream_cache_status always;
    }}
  }}
}}
"""

# One client process (the Python binding, its own handle): waits until `price` reads the
# target value, then prints what it serves and its download counters as JSON.
CLIENT = r"""
import json, sys, time
import lockstep
url, cache, token, name, target = sys.argv[1:]
c = lockstep.Client(url, token=token, name=name, cache_dir="", blob_url=cache,
                    bootstrap_wait=30, download_timeout=30)
deadline = time.time() + 60
while time.time() < deadline and c.get_str("price") != target:
    time.sleep(0.02)
s = c.stats()
print(json.dumps({"value": c.get_str("price"), "version": c.active_version,
                  "full_downloads": s["full_downloads"], "deltas": s["deltas_applied"],
                  "bytes_downloaded": s["bytes_downloaded"],
                  "rejected": s["rejected_versions"], "last_error": c.last_error()}))
c.close()
"""

MODULE = os.path.join(REPO, "target", "nginx-module", "ngx_http_lockstep_module.so")
WORKERS = 2

# nginx with the lockstep module as a web server of the farm: each worker its own handle (no
# host cache), downloading through the caching nginx (lockstep_blob_url).
WEB_CONF = """
load_module {module};
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  lockstep_url {upstream};
  lockstep_token {token};
  lockstep_name web;
  lockstep_bootstrap_wait 30s;
  lockstep_cache_dir off;
  lockstep_blob_url {cache};
  server {{
    # reuseport: fresh connections reach every worker, not the one that accepts first.
    listen 127.0.0.1:{port} reuseport;
    location /prices/ {{
      lockstep_serve;
      add_header X-Worker $pid always;
    }}
  }}
}}
"""


def get(url, token=None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=h), timeout=20) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def checkin(server):
    status, body, _ = get(server.url + "/v1/checkin?name=pytest", READ)
    assert status == 200, body
    return json.loads(body)


def downloads_total(server):
    status, body, _ = get(server.url + "/metrics", READ)
    assert status == 200, body
    for line in body.decode().splitlines():
        if line.startswith("lockstep_downloads_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no lockstep_downloads_total in /metrics")


def value_in_active(server, key):
    active = checkin(server)["active_version"]
    try:
        return server.admin(f"/v1/admin/key?key={key}&version={active}")["value"]
    except urllib.error.HTTPError:
        return None


def start_nginx(nginx_bin, workdir, upstream):
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, upstream=upstream))
    d = Daemon([nginx_bin, "-c", str(conf), "-p", str(workdir)], workdir / "nginx.out")
    # Any answer from the blob location (a 400 for this name) means nginx is up.
    assert wait_for(lambda: _status(f"http://127.0.0.1:{port}/v1/blobs/x") == 400, timeout=20), \
        (workdir / "nginx-error.log").read_text()
    return d, f"http://127.0.0.1:{port}"


def start_web(nginx_bin, workdir, upstream, cache_url):
    web = workdir / "web"
    web.mkdir()
    os.chmod(web, 0o755)
    port = free_port()
    conf = web / "nginx.conf"
    conf.write_text(WEB_CONF.format(module=MODULE, workers=WORKERS, dir=web, port=port,
                                    upstream=upstream, token=READ, cache=cache_url))
    d = Daemon([nginx_bin, "-c", str(conf), "-p", str(web)], web / "nginx.out")
    return d, port


def workers_serving(port, value, timeout=60):
    """The worker pids seen serving `value`, once every worker has (or the timeout passed)."""
    seen = set()
    deadline = time.time() + timeout
    while time.time() < deadline and len(seen) < WORKERS:
        try:
            status, body, headers = get(f"http://127.0.0.1:{port}/prices/price")
        except OSError:
            status = 0
        if status == 200 and body.decode() == value:
            seen.add(headers.get("X-Worker"))
        time.sleep(0.01)
    return seen


def _status(url):
    try:
        return get(url)[0]
    except OSError:
        return 0


def access_log(workdir):
    """(uri, status, cache status, authorization) per logged request."""
    out = []
    for line in (workdir / "access.log").read_text().splitlines():
        uri, status, cache, auth = line.split(" ", 3)
        out.append((uri, int(status), cache, auth))
    return out


def test_nginx_proxy_cache_fans_blobs_out_and_the_data_server_serves_each_once(nginx_bin,
                                                                               workdir):
    server = Server(workdir, interval="1s", min_window="500ms",
                    env={"LOCKSTEP_READ_TOKEN": READ})
    nginx = None
    try:
        # A version worth compressing: 3,000 keys of repetitive text.
        entries = [{"key": f"k{i:05}", "value": "shipping rule " * 8} for i in range(3000)]
        entries.append({"key": "price", "value": "1"})
        server.admin("/v1/admin/import", {"entries": entries}, timeout=60)
        assert wait_for(lambda: value_in_active(server, "price") == "1", timeout=30)
        nginx, cache_url = start_nginx(nginx_bin, workdir, server.url)
        before = downloads_total(server)

        # Clients on their own (no host cache), started together, and nginx web workers; the
        # edit comes while they boot, so they download the version active now and then the
        # one staged for it.
        web, web_port = start_web(nginx_bin, workdir, server.url, cache_url)
        env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "bindings", "python"))
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, server.url, cache_url, READ,
                                   f"c{i}", "2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                 for i in range(CLIENTS)]
        server.put("price", "2")
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
            results.append(json.loads(out))
        serving = workers_serving(web_port, "2")
        assert len(serving) == WORKERS, \
            (serving, (workdir / "web" / "nginx-error.log").read_text()[-2000:])
        web.stop()
        final = checkin(server)

        # Every client serves the farm's active version, downloaded whole through the cache
        # and verified against the announced checksum (a mismatch is a rejected version).
        for r in results:
            assert r["value"] == "2", results
            assert r["version"] == final["active_version"], (results, final)
            assert r["full_downloads"] >= 1 and r["rejected"] == 0, results

        log = [e for e in access_log(workdir) if e[0].startswith(("/v1/blobs/", "/v1/deltas/"))]
        fetched = collections.Counter(uri for uri, status, _, _ in log if status == 200)
        misses = collections.Counter(uri for uri, status, cache, _ in log
                                     if status == 200 and cache == "MISS")
        print("blob and delta requests through nginx:", dict(fetched), "misses:", dict(misses))
        # Everyone fetched the new version once through the cache, whole or as a delta.
        new = f"-{final['active_version']}-{final['active_checksum']}-"
        assert sum(n for uri, n in fetched.items() if new in uri) == CLIENTS + WORKERS, fetched
        # The data server served each blob and delta once: one miss per URL, and its own
        # download count (of full versions) agrees.
        assert all(misses[uri] == 1 for uri in fetched), (fetched, misses)
        blobs = [uri for uri in fetched if uri.startswith("/v1/blobs/")]
        served = downloads_total(server) - before
        assert served == len(blobs), f"data server served {served} for {len(blobs)} blobs"
        # No token travels to the cache: blob URLs are the capability.
        assert all(auth == "auth=-" for _, _, _, auth in log), log

        # zstd through the cache: fewer bytes than the version holds.
        raw = len(get(server.url + final["active_blob"])[1])
        total = sum(r["bytes_downloaded"] for r in results)
        fulls = sum(r["full_downloads"] for r in results)
        # Deltas add little: the bytes stay well under what the full versions weigh raw.
        assert total < fulls * raw * 0.6, (total, fulls, raw)

        # A blob URL needs no token; a check-in and the old version route still do.
        assert get(cache_url + final["active_blob"])[0] == 200
        assert get(server.url + final["active_blob"])[0] == 200
        assert get(server.url + "/v1/checkin?name=anon")[0] == 401
        assert get(server.url + f"/v1/versions/{final['active_version']}")[0] == 401
        # A wrong key is 404 with a message, through the cache too (and not cached).
        blob = final["active_blob"]
        wrong = blob[:-1] + ("0" if blob[-1] != "0" else "1")
        for base in (server.url, cache_url, cache_url):
            status, body, _ = get(base + wrong)
            assert status == 404, (base, status, body)
            assert "key" in json.loads(body)["error"]
    finally:
        if nginx:
            nginx.stop()
        server.stop()
