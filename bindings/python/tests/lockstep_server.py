"""A real `lockstep serve` child process for the Python-driven tests (bindings/python/tests and
tests/servers)."""

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TOKEN = "python-test-token"


def lockstep_bin():
    return os.environ.get("LOCKSTEP_BIN", os.path.join(REPO, "target", "debug", "lockstep"))


class Server:
    """A real `lockstep serve` child process; with `tls=(cert, key, ca)` it serves HTTPS
    itself (--tls-cert/--tls-key) and this side's requests verify it against `ca`."""

    def __init__(self, tmp_path, interval="200ms", min_window="100ms", listen="127.0.0.1:0",
                 env=None, tls=None):
        env = dict(os.environ, LOCKSTEP_ADMIN_TOKEN=TOKEN, LOCKSTEP_LOG="warn", **(env or {}))
        args = [lockstep_bin(), "serve", "--db", str(tmp_path / "db"), "--listen", listen,
                "--interval", interval, "--min-window", min_window]
        self._ssl = None
        if tls:
            cert, key, ca = tls
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
            self._ssl = ssl.create_default_context(cafile=str(ca))
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("lockstep: listening on "), line
        self.url = line.split()[-1]
        assert self.url.startswith("https://" if tls else "http://"), self.url
        # It listens before its database answers (503 until then): wait for readiness.
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/v1/ready", timeout=5,
                                            context=self._ssl):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.01)

    def admin(self, path, body=None, timeout=10):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Authorization": "Bearer " + TOKEN,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as r:
            return json.loads(r.read())

    def put(self, key, value):
        return self.admin("/v1/admin/put", {"key": key, "value": value})

    def value_in_active(self, key):
        with urllib.request.urlopen(self.url + "/v1/checkin?name=pytest", timeout=10,
                                    context=self._ssl) as r:
            active = json.loads(r.read())["active_version"]
        try:
            return self.admin(f"/v1/admin/key?key={key}&version={active}")["value"]
        except urllib.error.HTTPError:
            return None

    def wait_active(self, key, value, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.value_in_active(key) == value:
                return
            time.sleep(0.02)
        raise AssertionError(f"{key}={value} never became active")

    def stop(self):
        self.proc.kill()
        self.proc.wait()




def wait_for(predicate, timeout=20, interval=0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
