"""What the admin page's browser test runs around Chromium: a real data server with an admin
and a read token, real client processes (the Python binding over liblockstep), synthetic
check-ins for a thousand-member farm, and a page of another origin."""

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "bindings", "python", "tests"))

from lockstep_server import lockstep_bin  # noqa: E402

ADMIN_TOKEN = "ui-admin-token-7f3a9c"
READ_TOKEN = "ui-read-token-51e0d2"


class DataServer:
    """`lockstep serve` with both tokens; its stderr goes to a file the test reads back."""

    def __init__(self, workdir, interval="1s", min_window="500ms"):
        self.log_path = os.path.join(str(workdir), "server.log")
        env = dict(os.environ, LOCKSTEP_ADMIN_TOKEN=ADMIN_TOKEN, LOCKSTEP_READ_TOKEN=READ_TOKEN,
                   LOCKSTEP_LOG="info")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [lockstep_bin(), "serve", "--db", os.path.join(str(workdir), "db"), "--listen",
             "127.0.0.1:0", "--interval", interval, "--min-window", min_window],
            stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("lockstep: listening on "), line
        self.url = line.split()[-1]
        self.port = urllib.parse.urlsplit(self.url).port
        # It listens at once and answers 503 until its database does.
        deadline = time.time() + 30
        while self.request("GET", "/v1/ready", token=None)[0] != 200:
            assert time.time() < deadline, "the data server never became ready"
            time.sleep(0.05)

    def request(self, method, path, body=None, token=ADMIN_TOKEN, headers=None):
        """(status, headers, parsed JSON or text) without raising on 4xx."""
        data = None if body is None else json.dumps(body).encode()
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        if data is not None:
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, hdrs, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        try:
            return status, hdrs, json.loads(raw) if raw else None
        except ValueError:
            return status, hdrs, raw.decode(errors="replace")

    def admin(self, path, body=None):
        status, _, data = self.request("POST" if body is not None else "GET", path, body)
        assert status == 200, (path, status, data)
        return data

    def production(self, key):
        status, _, data = self.request("GET", "/v1/admin/key?" + urllib.parse.urlencode({"key": key}))
        return data["value"] if status == 200 else None

    def in_version(self, version, key):
        q = urllib.parse.urlencode({"key": key, "version": version})
        status, _, data = self.request("GET", "/v1/admin/key?" + q)
        return data["value"] if status == 200 else None

    def active_version(self):
        return self.admin("/v1/admin/status")["sync"]["active_version"]

    def wait_active(self, key, value, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.in_version(self.active_version(), key) == value:
                return
            time.sleep(0.05)
        raise AssertionError(f"{key}={value} never became active")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


CLIENT = r"""
import sys, time
import lockstep
url, token, name = sys.argv[1:4]
c = lockstep.Client(url, token=token, name=name, cache_dir="", bootstrap_wait=20)
print("ready", flush=True)
while True:
    c.get("price:apple")
    time.sleep(0.05)
"""


class Clients:
    """Web servers: each a Python process holding a `lockstep.Client` without a host cache,
    so each checks in for itself and reports its own switches."""

    def __init__(self, url, names):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(REPO, "bindings", "python"), env.get("PYTHONPATH", "")])
        self.procs = [subprocess.Popen([sys.executable, "-c", CLIENT, url, READ_TOKEN, n],
                                       stdout=subprocess.PIPE, env=env) for n in names]
        for p in self.procs:
            line = p.stdout.readline().decode()
            assert line.startswith("ready"), line

    def stop(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def synthetic_checkins(server, hosts, per_host, active, staged, only=lambda h, p: True,
                       threads=8):
    """One check-in per (host, process) that `only` accepts, as real clients send them, with
    offsets, error bounds and a few lagging members: a farm of hosts × per_host members."""
    todo = [(h, p) for h in range(hosts) for p in range(per_host) if only(h, p)]
    lock = threading.Lock()
    errors = []

    def run():
        try:
            send()
        except Exception as e:  # a thread's failure must fail the test, not vanish
            errors.append(e)

    def send():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while True:
            with lock:
                if not todo:
                    break
                h, p = todo.pop()
            q = urllib.parse.urlencode({
                "name": f"shop-{h:02d}-{p:02d}", "host": f"rack{h:02d}.farm.test",
                "pid": 20000 + p, "active": active if (h + p) % 17 else active - 1,
                "staged": staged, "offset_us": (h * 7919 + p * 104729) % 4_000_000 - 2_000_000,
                "error_us": 150 + (h * 31 + p) % 900, "lagging": 1 if (h + p) % 17 == 0 else 0,
            })
            conn.request("GET", "/v1/checkin?" + q,
                         headers={"Authorization": "Bearer " + READ_TOKEN})
            r = conn.getresponse()
            r.read()
            assert r.status in (200, 304), (r.status, q)
        conn.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


class OtherOrigin:
    """A page of another origin (another port) that tries to change production on the data
    server, with and without a bearer token it would have to know."""

    PAGE = """<!doctype html><title>elsewhere</title><script>
    const target = %(target)s;
    const body = JSON.stringify({key: 'price:apple', value: '6.66'});
    async function attempt(init) {
      try { const r = await fetch(target + '/v1/admin/put', init); return 'status ' + r.status + ' ' + r.type; }
      catch (e) { return 'blocked: ' + e.name; }
    }
    window.results = (async () => ({
      simple: await attempt({method: 'POST', mode: 'no-cors', credentials: 'include',
                              headers: {'Content-Type': 'text/plain'}, body}),
      bearer: await attempt({method: 'POST', credentials: 'include',
                              headers: {'Content-Type': 'application/json',
                                        'Authorization': 'Bearer ' + %(token)s}, body}),
    }))();
    </script>"""

    def __init__(self, target, token):
        page = (self.PAGE % {"target": json.dumps(target), "token": json.dumps(token)}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
