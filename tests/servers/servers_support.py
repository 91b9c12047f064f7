"""Helpers for the tests that run real nginx, PHP-FPM and gunicorn around liblockstep, over
HTTP: the servers' configuration, pollers, and what a host asks of the data server (a counting
proxy) and holds in memory (the PSS of the host cache's mapped version files)."""

import collections
import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
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
    response reports. A request that failed (no answer, or a status other than 200 and 404)
    is kept in `failures`; a keep-alive connection the server closed between two requests is
    opened again and the request retried once, as HTTP clients do."""

    def __init__(self, port, path, parse, connections=16):
        self.records = []
        self.failures = []
        self.lock = threading.Lock()
        self.stop_flag = False
        self.threads = [threading.Thread(target=self._run, args=(port, path, parse), daemon=True)
                        for _ in range(connections)]
        for t in self.threads:
            t.start()

    def _request(self, conn, path):
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp, resp.read()

    def _run(self, port, path, parse):
        conn = None
        while not self.stop_flag:
            sent = time.time_ns() // 1000
            try:
                reused = conn is not None
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    resp, body = self._request(conn, path)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    if not reused:
                        raise
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    resp, body = self._request(conn, path)
                received = time.time_ns() // 1000
                if resp.status not in (200, 404):
                    with self.lock:
                        self.failures.append((sent, resp.status, body[:200]))
                rec = parse(resp, body)
                if rec is not None:
                    rec.update(sent=sent, received=received)
                    with self.lock:
                        self.records.append(rec)
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failures.append((sent, 0, repr(e)))
                conn = None
                time.sleep(0.01)
            time.sleep(0.002)

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def failed(self):
        with self.lock:
            return list(self.failures)

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


# --- One copy per host: a big version, what the host asks of the data server, what it maps ---

def publish_big(server, keys=50_000, value_bytes=1000, tag="a", extra=None):
    """Imports `keys` keys of `value_bytes` bytes (50,000 x 1,000: a version of about 51 MB,
    in one request well under the data server's 64 MiB --max-body-bytes), and the `extra`
    {key: value} in the same edit."""
    pad = "x" * (value_bytes - len(tag))
    entries = [{"key": f"k{i:06}", "value": tag + pad} for i in range(keys)]
    entries += [{"key": k, "value": v} for k, v in (extra or {}).items()]
    # Encoding 51 MB takes the data server seconds in a debug build, more on a busy machine.
    server.admin("/v1/admin/import", {"entries": entries}, timeout=120)


def transfer_of(path):
    """The version a request path transfers, whole or as a delta, or None:
    /v1/versions/{n}, /v1/blobs/{n}-{checksum}-{key}, /v1/deltas/{base}-{n}-{checksum}-{key}."""
    for prefix, field in (("/v1/versions/", 0), ("/v1/blobs/", 0), ("/v1/deltas/", 1)):
        if path.startswith(prefix):
            try:
                return int(path[len(prefix):].split("-")[field])
            except (IndexError, ValueError):
                return None
    return None


class CountingProxy:
    """An HTTP proxy between a host's processes and the data server that counts what the host
    asks: every check-in (with the name, pid and role it reports, and when) and every version
    download answered 200 in full (by version number). `stop()` closes the listening socket
    and every open connection, as a data server that went away would."""

    def __init__(self, upstream_url, port=0):
        up = urllib.parse.urlsplit(upstream_url)
        self.upstream = (up.hostname, up.port)
        self.lock = threading.Lock()
        self.checkin_log = []           # (time.monotonic(), name, pid, role)
        self.downloads = collections.Counter()  # version -> full 200 answers
        self.connections = set()
        # Seconds each version download waits before its answer (a slow link); 0: none.
        self.version_delay = 0.0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with proxy.lock:
                    proxy.connections.add(self.connection)
                self.upstream_conn = None

            def finish(self):
                with proxy.lock:
                    proxy.connections.discard(self.connection)
                if self.upstream_conn:
                    self.upstream_conn.close()
                super().finish()

            def do_GET(self):
                self.forward()

            def do_POST(self):
                self.forward()

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "keep-alive")}
                try:
                    if self.upstream_conn is None:
                        self.upstream_conn = http.client.HTTPConnection(*proxy.upstream,
                                                                        timeout=60)
                    self.upstream_conn.request(self.command, self.path, body=body,
                                               headers=headers)
                    resp = self.upstream_conn.getresponse()
                except (OSError, http.client.HTTPException):
                    if self.upstream_conn:
                        self.upstream_conn.close()
                    self.upstream_conn = None
                    self.send_error(502)
                    return
                url = urllib.parse.urlsplit(self.path)
                # A full version: the old route or a blob URL (both carry x-lockstep-version).
                is_version = url.path.startswith(("/v1/versions/", "/v1/blobs/"))
                if is_version and proxy.version_delay:
                    time.sleep(proxy.version_delay)  # a slow network, for the version bytes
                if url.path == "/v1/checkin":
                    q = urllib.parse.parse_qs(url.query)
                    one = lambda k: q.get(k, [""])[0]  # noqa: E731
                    with proxy.lock:
                        proxy.checkin_log.append((time.monotonic(), one("name"), one("pid"),
                                                  one("role")))
                self.send_response_only(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                         "content-length"):
                        self.send_header(k, v)
                declared = resp.getheader("Content-Length")
                data = None if declared is not None else resp.read()
                total = int(declared) if declared is not None else len(data)
                self.send_header("Content-Length", str(total))
                self.end_headers()
                # A transfer counts once begun, finished or not: a client cut off mid-body (a
                # recycled leader) that its successor downloads again is two transfers.
                transferred = transfer_of(url.path) if resp.status == 200 else None
                if transferred is not None:
                    with proxy.lock:
                        proxy.downloads[transferred] += 1
                sent = 0
                try:
                    if data is not None:
                        self.wfile.write(data)
                        sent = len(data)
                    else:
                        while sent < total:
                            chunk = resp.read(min(1 << 20, total - sent))
                            if not chunk:
                                break
                            self.wfile.write(chunk)
                            sent += len(chunk)
                except OSError:  # the client went away mid-answer (counted above all the same)
                    self.close_connection = True
                    self.upstream_conn.close()
                    self.upstream_conn = None
                    return
                if sent != total:
                    self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def checkins(self, since=0.0):
        """The check-ins seen since time.monotonic() `since`: (when, name, pid, role)."""
        with self.lock:
            return [c for c in self.checkin_log if c[0] >= since]

    def download_counts(self):
        with self.lock:
            return dict(self.downloads)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def cache_mappings(cache_root):
    """Every process on this machine that maps a version file of the host cache under
    `cache_root`: {pid: {file name: Pss kB}}. Files unlinked while mapped count too (their
    mapping ends in "(deleted)"): they are memory all the same."""
    root = os.path.realpath(str(cache_root)) + os.sep
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/smaps") as f:
                lines = f.readlines()
        except OSError:
            continue
        current = None
        for line in lines:
            fields = line.split(None, 5)
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
                path = fields[5].strip() if len(fields) == 6 else ""
                name = path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path
                current = name if name.startswith(root) and name.endswith(".lkv") else None
            elif current and line.startswith("Pss:"):
                files = out.setdefault(int(entry), {})
                base = os.path.basename(current)
                files[base] = files.get(base, 0) + int(line.split()[1])
    return out


def version_files(cache_root):
    """{file name: bytes} of the version files in the host cache (every data server's)."""
    out = {}
    for sub in os.listdir(cache_root):
        d = os.path.join(cache_root, sub)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.endswith(".lkv"):
                    out[name] = os.path.getsize(os.path.join(d, name))
    return out


def children(pid):
    """The pids of a process's children."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def read_schedule(cache_root):
    """The host's schedule (the leader's word) in the one data-server directory of a host
    cache, or None before there is one."""
    import json
    for sub in os.listdir(cache_root):
        try:
            with open(os.path.join(cache_root, sub, "schedule.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            continue
    return None


def http_get(port, path, timeout=30):
    """(status, headers, body) of one GET on a fresh connection; status 0 if none came."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except (OSError, http.client.HTTPException) as e:
        return 0, {}, repr(e).encode()
    finally:
        conn.close()


def get_many(port, path, n, concurrency=4):
    """n GETs from `concurrency` threads: [(status, headers, body)] in completion order."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: http_get(port, path), range(n)))


class OneHost:
    """What the host-cache tests check about one host's processes against a data server:
    downloads and check-ins counted at a proxy, a lone client (no host cache) beside them for
    comparison, and the memory of the mapped version files."""

    def __init__(self, proxy, cache_root, lone):
        self.proxy = proxy
        self.cache = cache_root
        self.lone = lone

    def assert_one_download_per_version(self, versions):
        counts = self.proxy.download_counts()
        print("downloads per version at the proxy:", counts)
        assert set(versions) <= set(counts), f"versions {versions} not all downloaded: {counts}"
        assert all(n == 1 for n in counts.values()), \
            f"the host downloaded a version more than once: {counts}"

    def assert_checks_in_as_one_client(self, seconds, interval_s):
        """Over quiet cycles, one process of the host checks in, about as often as the lone
        client does by itself."""
        lone_before = self.lone.stats()["checkins"]
        since = time.monotonic()
        time.sleep(seconds)
        host = self.proxy.checkins(since)
        lone = self.lone.stats()["checkins"] - lone_before
        cycles = seconds / interval_s
        pids = sorted({c[2] for c in host})
        print(f"check-ins per {interval_s:g} s cycle over {cycles:g} quiet cycles: host "
              f"{len(host) / cycles:.1f} (from pids {pids}), one lone client {lone / cycles:.1f}")
        assert len(pids) == 1, f"more than one process of the host checks in: {pids}"
        assert all(c[3] == "leader" for c in host), host[:3]
        assert lone > 0
        assert len(host) <= 1.5 * lone + 2, f"host {len(host)} check-ins, lone client {lone}"

    def assert_one_copy(self, version, serving_pids):
        """Every serving process maps `version`'s file from the host cache, and the summed
        PSS of every mapping of the host cache's version files, over every process on this
        machine, is at most 1.2x that file's size."""
        files = {n: size for n, size in version_files(self.cache).items()
                 if n.startswith(f"v{version}-")}
        assert len(files) == 1, version_files(self.cache)
        (name, size), = files.items()
        maps = cache_mappings(self.cache)
        total_kb = sum(kb for f in maps.values() for kb in f.values())
        alive = [p for p in serving_pids if os.path.exists(f"/proc/{p}")]
        missing = [p for p in alive if name not in maps.get(p, {})]
        print(f"summed PSS of the mapped version files over {len(maps)} processes: "
              f"{total_kb} kB for a {size // 1024} kB version ({total_kb * 1024 / size:.2f}x); "
              f"per process: {sorted(sum(f.values()) for f in maps.values())}")
        assert alive, "no serving process is alive"
        assert not missing, f"processes {missing} serve without mapping {name}: {maps}"
        assert total_kb * 1024 <= 1.2 * size, f"{total_kb} kB mapped for a {size} byte version"

    def assert_farm_view_groups_the_host(self, server, pids):
        """The data server's farm view lists every live process of the host that holds a
        handle: the one checking in as the host's leader, the others as its followers (the
        leader reports them in its check-ins; they never talk to the data server)."""
        leader = int(self.proxy.checkins()[-1][2])
        status = server.admin("/v1/admin/status")
        members = {m["pid"]: m for m in status["farm"] if not m["stale"]}
        alive = {p for p in pids if os.path.exists(f"/proc/{p}")} | {leader}
        print("farm view of the host:", {p: (members[p]["role"], members[p]["leader_pid"])
                                         for p in sorted(alive) if p in members},
              [h for h in status["hosts"] if h["leader_pid"] == leader])
        assert not alive - set(members), f"processes {alive - set(members)} not in the farm view"
        assert members[leader]["role"] == "leader"
        for p in alive - {leader}:
            assert (members[p]["role"], members[p]["leader_pid"]) == ("follower", leader), \
                members[p]
        host, = [h for h in status["hosts"] if h["leader_pid"] == leader]
        assert host["following"] >= len(alive) - 1, host
