"""The data server's /metrics, read with Prometheus' own Python parser, moving as the farm works."""

import json
import subprocess
import time
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
        ("lockstep_activation_spread_seconds", "gauge"),
        ("lockstep_clock_error_seconds", "gauge"),
    ]:
        assert name in families, f"{name} missing: {sorted(families)}"
        assert families[name].type == kind, (name, families[name].type)
        assert families[name].documentation, name

    server.put("price:apple", "1.25")
    server.put("price:pear", "2.00")
    server.wait_active("price:pear", "2.00")
    # Three farm members, one lagging, with known clock error bounds.
    active = checkin(server, "m1", host="h1", pid=1, error_us=1000)["active_version"]
    checkin(server, "m2", host="h2", pid=2, error_us=2000, active=active)
    checkin(server, "m3", host="h3", pid=3, error_us=9000, lagging=1, active=active)
    with urllib.request.urlopen(f"{server.url}/v1/versions/{active}", timeout=10) as r:
        size = len(r.read())

    def moved():
        _, after = scrape(server)
        return after if value(after, "lockstep_farm_members", state="live") >= 3 else None

    after = wait_for(moved, timeout=10, interval=0.2)
    families, _ = scrape(server)
    assert after, "the farm never showed in /metrics"
    assert value(after, "lockstep_production_keys") == 2
    assert value(after, "lockstep_versions") > value(before, "lockstep_versions")
    assert value(after, "lockstep_rotations_total") > value(before, "lockstep_rotations_total")
    assert value(after, "lockstep_checkins_total", result="ok") >= 3
    assert value(after, "lockstep_downloads_total") == value(before, "lockstep_downloads_total") + 1
    assert (value(after, "lockstep_download_bytes_total")
            == value(before, "lockstep_download_bytes_total") + size)
    assert value(after, "lockstep_lagging_members") == 1
    # Nearest rank over the live members' bounds: 1 ms, 2 ms, 9 ms (plus any pytest probes,
    # which report 0).
    assert value(after, "lockstep_clock_error_seconds", quantile="1") == pytest.approx(0.009)
    assert families["lockstep_http_request_duration_seconds"].type == "histogram"
    count = value(after, "lockstep_http_request_duration_seconds_count",
                  route="/v1/admin/put", method="POST", status="200")
    assert count == 2, after
    assert value(after, "lockstep_http_request_duration_seconds_sum",
                 route="/v1/admin/put", method="POST", status="200") > 0

    # The CLI's activations and the spread metric agree on the last activation.
    out = subprocess.run([lockstep_bin(), "activations", "--json", "--server", server.url],
                         env={"LOCKSTEP_ADMIN_TOKEN": TOKEN}, capture_output=True, check=True)
    newest = json.loads(out.stdout)[0]
    _, last = scrape(server)
    assert value(last, "lockstep_activation_spread_seconds") == (newest["spread_us"] or 0) / 1e6
    assert value(last, "lockstep_activation_clients", outcome="missing") >= 0


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
