"""Helpers for the tests that run real nginx and PHP-FPM around liblockstep, over HTTP."""

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "bindings", "python", "tests"))

from lockstep_server import Server, wait_for  # noqa: E402,F401


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template, out, **values):
    with open(template) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def host_cache(workdir, user):
    """A host-cache directory for workers running as `user`: theirs, mode 0700."""
    import pwd
    path = os.path.join(str(workdir), "cache")
    os.makedirs(path, mode=0o700, exist_ok=True)
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o700)
    return path


class Daemon:
    def __init__(self, args, log):
        self.proc = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Poller:
    """Many keep-alive connections polling one URL, recording for each response the send and
    receive wall-clock times (the data server's clock: same host), and the fields the
    response reports."""

    def __init__(self, port, path, parse, connections=16):
        self.records = []
        self.lock = threading.Lock()
        self.stop_flag = False
        self.threads = [threading.Thread(target=self._run, args=(port, path, parse), daemon=True)
                        for _ in range(connections)]
        for t in self.threads:
            t.start()

    def _run(self, port, path, parse):
        conn = None
        while not self.stop_flag:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                sent = time.time_ns() // 1000
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                received = time.time_ns() // 1000
                rec = parse(resp, body)
                if rec is not None:
                    rec.update(sent=sent, received=received)
                    with self.lock:
                        self.records.append(rec)
            except (OSError, http.client.HTTPException):
                conn = None
                time.sleep(0.01)
            time.sleep(0.002)

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def stop(self):
        self.stop_flag = True
        for t in self.threads:
            t.join()


def assert_switched_together(records, new_value, activation_us, workers, tolerance_us=20_000):
    """Every worker switched to the version holding new_value, and none served it before the
    activation time or the old one after it (within the tolerance: an HTTP round trip and the
    scheduler, on top of the library's sub-millisecond activation)."""
    new = [r for r in records if r["value"] == new_value]
    assert new, "no worker ever served the new value"
    version = new[0]["version"]
    old = [r for r in records if r["version"] < version]
    pids = {r["pid"] for r in records}
    switched = {r["pid"] for r in new}
    assert len(pids) >= workers, f"only {len(pids)} workers answered"
    assert switched == pids, f"workers {pids - switched} never served the new value"
    early = [r for r in new if r["received"] < activation_us - tolerance_us]
    late = [r for r in old if r["sent"] > activation_us + tolerance_us]
    assert not early, f"new value served {(activation_us - early[0]['received'])/1000:.1f} ms early"
    assert not late, f"old value served {(late[0]['sent'] - activation_us)/1000:.1f} ms late"
    firsts = {}
    for r in new:
        firsts[r["pid"]] = min(firsts.get(r["pid"], r["received"]), r["received"])
    return version, firsts


def activated_at(server, version):
    """The activation time of a version, from the data server's history; it is recorded by
    the rotation after it, which a check-in triggers."""
    def find():
        for v in server.admin("/v1/admin/history"):
            if v["version"] == version and v.get("activated_us"):
                return v["activated_us"]
        urllib.request.urlopen(server.url + "/v1/checkin?name=judge").read()
        return None

    t = wait_for(find, timeout=10)
    assert t, f"version {version} never got an activation time"
    return t


def edit_and_watch_every_worker_switch(server, poller, new_value, workers):
    """Puts price:apple=new_value while the poller watches, waits until every worker serves it,
    and checks they all switched at its activation time. Returns the records and that time."""
    server.put("price:apple", new_value)

    def all_switched():
        records = poller.snapshot()
        return {r["pid"] for r in records if r["value"] == new_value} == {r["pid"] for r in records}

    assert wait_for(all_switched, timeout=20), "not every worker switched"
    time.sleep(0.2)
    poller.stop()
    records = poller.snapshot()
    version = next(r["version"] for r in records if r["value"] == new_value)
    t = activated_at(server, version)
    _, firsts = assert_switched_together(records, new_value, t, workers=workers)
    print("first new responses per worker, ms after the activation:",
          {pid: (f - t) / 1000 for pid, f in firsts.items()})
    return records, t
