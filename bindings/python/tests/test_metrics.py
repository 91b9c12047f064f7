"""The data server's /metrics, read with Prometheus' own Python parser, moving as the farm works."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import parser
from prometheus_client.openmetrics import parser as openmetrics_parser

from lockstep_server import TOKEN, Server, lockstep_bin, wait_for


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path, interval="300ms", min_window="150ms")
    yield s
    s.stop()


def scrape(server):
    """Every sample by (name, sorted labels), and the families by name."""
    req = urllib.request.Request(server.url + "/metrics")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    # Prometheus' classic text parser reads it (a Prometheus server asks for OpenMetrics, which
    # this is) ...
    assert list(parser.text_string_to_metric_families(text))
    # ... and the strict OpenMetrics parser checks every line, types and the final # EOF.
    families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(text)}
    samples = {}
    for f in families.values():
        for s in f.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def checkin(server, name, **extra):
    query = "&".join(f"{k}={v}" for k, v in dict(name=name, **extra).items())
    with urllib.request.urlopen(f"{server.url}/v1/checkin?{query}", timeout=10) as r:
        return json.loads(r.read())


def test_metrics_parse_and_move_with_edits_rotations_checkins_and_downloads(server):
    families, before = scrape(server)
    for name, kind in [
        ("lockstep_rotations", "counter"),
        ("lockstep_checkins", "counter"),
        ("lockstep_downloads", "counter"),
        ("lockstep_download_bytes", "counter"),
        ("lockstep_versions", "gauge"),
        ("lockstep_production_keys", "gauge"),
        ("lockstep_farm_members", "gauge"),
        ("lockstep_lagging_members", "gauge"),
        ("lockstep_clock_error_seconds", "gauge"),
    ]:
        assert name in families, f"{name} missing: {sorted(families)}"
        assert families[name].type == kind, (name, families[name].type)
        assert families[name].documentation, name

    server.put("price:apple", "1.25")
    server.put("price:pear", "2.00")
    server.wait_active("price:pear", "2.00")
    # Ten farm members, one lagging, with distinct clock error bounds of 1 to 10 ms.
    active = checkin(server, "m1", host="h1", pid=1, error_us=1000)["active_version"]
    checkin(server, "m2", host="h2", pid=2, error_us=2000, active=active)
    checkin(server, "m3", host="h3", pid=3, error_us=9000, lagging=1, active=active)
    for i, ms in enumerate([3, 4, 5, 6, 7, 8, 10], start=4):
        checkin(server, f"m{i}", host=f"h{i}", pid=i, error_us=ms * 1000, active=active)
    with urllib.request.urlopen(f"{server.url}/v1/versions/{active}", timeout=10) as r:
        size = len(r.read())

    def moved():
        _, after = scrape(server)
        return after if value(after, "lockstep_farm_members", state="live") >= 10 else None

    after = wait_for(moved, timeout=10, interval=0.2)
    families, _ = scrape(server)
    assert after, "the farm never showed in /metrics"
    assert value(after, "lockstep_production_keys") == 2
    assert value(after, "lockstep_versions") > value(before, "lockstep_versions")
    assert value(after, "lockstep_rotations_total") > value(before, "lockstep_rotations_total")
    assert value(after, "lockstep_checkins_total", result="ok") >= 10
    assert value(after, "lockstep_downloads_total") == value(before, "lockstep_downloads_total") + 1
    assert (value(after, "lockstep_download_bytes_total")
            == value(before, "lockstep_download_bytes_total") + size)
    assert value(after, "lockstep_lagging_members") == 1
    # Nearest rank over the live members' bounds: 0 (the "pytest" probe of wait_active, one
    # member that reports none), then 1 to 10 ms: eleven values.
    assert live_members(server) == 11
    for q, ms in [("0.5", 5), ("0.9", 9), ("0.99", 10), ("1", 10)]:
        got = value(after, "lockstep_clock_error_seconds", quantile=q)
        assert got == pytest.approx(ms / 1000), (q, got)
    assert families["lockstep_http_request_duration_seconds"].type == "histogram"
    count = value(after, "lockstep_http_request_duration_seconds_count",
                  route="/v1/admin/put", method="POST", status="200")
    assert count == 2, after
    assert value(after, "lockstep_http_request_duration_seconds_sum",
                 route="/v1/admin/put", method="POST", status="200") > 0

    # A check-in that already holds the sync table (304) and one the data server refuses (400)
    # each move their own count, and only theirs.
    _, before = scrape(server)
    not_modified = None
    for _ in range(50):
        with urllib.request.urlopen(f"{server.url}/v1/checkin?name=m1&host=h1&pid=1",
                                    timeout=10) as r:
            etag = r.headers["ETag"]
        req = urllib.request.Request(f"{server.url}/v1/checkin?name=m1&host=h1&pid=1",
                                     headers={"If-None-Match": etag})
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code == 304:
                not_modified = e
                break
            raise
    assert not_modified is not None, "no check-in ever answered 304"
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{server.url}/v1/checkin?name=m1&pid=not-a-number", timeout=10)
    assert bad.value.code == 400
    _, later = scrape(server)
    moved = {r: value(later, "lockstep_checkins_total", result=r)
             - value(before, "lockstep_checkins_total", result=r)
             for r in ["ok", "not_modified", "error"]}
    assert moved["not_modified"] == 1, moved
    assert moved["error"] == 1, moved
    assert moved["ok"] >= 1, moved


def live_members(server):
    farm = server.admin("/v1/admin/status")["farm"]
    return sum(1 for m in farm if not m["stale"])


def test_a_stale_member_is_counted_apart_and_left_out_of_lagging_and_clock_errors(server):
    checkin(server, "ghost", host="hg", pid=9, error_us=50_000, lagging=1)
    deadline = time.time() + 30
    while True:
        checkin(server, "live", host="hl", pid=8, error_us=3000)
        _, m = scrape(server)
        if value(m, "lockstep_farm_members", state="stale") >= 1:
            break
        assert time.time() < deadline, "the silent member never went stale"
        time.sleep(0.5)
    assert value(m, "lockstep_farm_members", state="stale") == 1
    assert value(m, "lockstep_farm_members", state="live") == 1
    # What a probably dead process last said counts for nothing.
    assert value(m, "lockstep_lagging_members") == 0
    assert value(m, "lockstep_clock_error_seconds", quantile="1") == pytest.approx(0.003)


CLIENT = """
import sys
import lockstep
c = lockstep.Client(sys.argv[1], name=sys.argv[2], cache_dir="")
print("up", flush=True)
sys.stdin.read()
c.close()
"""


def client_process(server, name):
    """A real client in a process of its own (per-process mode: it checks in and reports its
    switches itself), up until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", CLIENT, server.url, name],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ))
    assert p.stdout.readline() == b"up\n"
    return p


def activation_of(server, version):
    for a in server.admin("/v1/admin/activations?limit=10"):
        if a["version"] == version:
            return a
    return None


def activation_metrics(samples):
    spread = samples.get(("lockstep_activation_spread_seconds", ()))
    error = samples.get(("lockstep_activation_spread_error_seconds", ()))
    clients = {o: value(samples, "lockstep_activation_clients", outcome=o)
               for o in ["switched", "late", "missing"]}
    return spread, error, clients


def test_activation_metrics_show_the_last_settled_activation_that_real_clients_reported(server):
    server.put("price", "1")
    server.wait_active("price", "1")
    # Before any activation that clients reported on time, there is no spread to show (a 0
    # would claim a perfect one).
    spread, error, _ = activation_metrics(scrape(server)[1])
    assert (spread, error) == (None, None)

    procs = [client_process(server, f"real-{i}") for i in range(3)]
    try:
        server.put("price", "2")
        server.wait_active("price", "2")
        v2 = server.admin("/v1/admin/status")["sync"]["active_version"]
        a2 = wait_for(lambda: (a := activation_of(server, v2)) and a["clients_switched"] == 3
                      and a, timeout=20, interval=0.1)
        assert a2, activation_of(server, v2)
        settled = a2["activation_time_us"] / 1e6 + 1.2 + 0.3
        time.sleep(max(0.0, settled - time.time()))
        a2 = activation_of(server, v2)
        families, samples = scrape(server)
        spread, error, clients = activation_metrics(samples)
        for name in ["lockstep_activation_spread_seconds",
                     "lockstep_activation_spread_error_seconds", "lockstep_activation_clients"]:
            assert families[name].type == "gauge", name
            assert families[name].documentation, name
        # The spread and its bound are the activation's, as the API gives them.
        assert spread == a2["spread_us"] / 1e6, (spread, a2)
        assert error == a2["error_us"] / 1e6, (error, a2)
        assert a2["error_us"] > 0, a2
        assert clients == {"switched": 3, "late": 0, "missing": 0}, (clients, a2)

        # One client goes away just before the next activation: it was up at that time and
        # never reports, so it is missing from it.
        procs[2].kill()
        procs[2].wait()
        server.put("price", "3")
        server.wait_active("price", "3")
        v3 = server.admin("/v1/admin/status")["sync"]["active_version"]
        a3 = activation_of(server, v3)
        young, _, young_clients = activation_metrics(scrape(server)[1])
        if time.time() < a3["activation_time_us"] / 1e6 + 1.0:
            # Not settled yet: the metrics still describe the activation before, instead of
            # one whose members have not all had a check-in to report in.
            assert young_clients == {"switched": 3, "late": 0, "missing": 0}, young_clients
            assert young == a2["spread_us"] / 1e6
        settled = a3["activation_time_us"] / 1e6 + 1.2 + 0.3
        time.sleep(max(0.0, settled - time.time()))
        a3 = activation_of(server, v3)
        spread, error, clients = activation_metrics(scrape(server)[1])
        assert clients == {"switched": 2, "late": 0, "missing": 1}, (clients, a3)
        assert (a3["clients_switched"], a3["clients_missing"]) == (2, 1), a3
        assert spread == a3["spread_us"] / 1e6, (spread, a3)
        assert error == a3["error_us"] / 1e6, (error, a3)
    finally:
        for p in procs:
            p.kill()
            p.wait()
