"""A restage the client hears of before the activation time (here a rollback) while the new
staged version is still on its way: SPEC invariant 9, no process ever serves a version the farm
did not activate. A slow link (the counting proxy's version_delay) makes the download of the
rollback's version finish after the activation time."""

import json
import time
import urllib.request

import pytest

import lockstep
from servers_support import CountingProxy, Server, wait_for


def test_a_client_that_heard_of_a_rollback_never_activates_the_version_it_replaced(workdir):
    server = Server(workdir, interval="1s", min_window="500ms")
    proxy = client = None
    try:
        server.put("price", "old")
        server.wait_active("price", "old")
        old = server.admin("/v1/admin/status")["sync"]["active_version"]
        proxy = CountingProxy(server.url)
        client = lockstep.Client(proxy.url, cache_dir="", name="restaged")
        server.admin("/v1/admin/interval", {"interval": "6s", "min_window": "5s"})
        server.put("price", "new")
        assert wait_for(lambda: client.staged_version > old, timeout=30)
        new, t_us = client.staged_version, client.next_activation_us
        left = lambda: t_us / 1e6 - time.time()  # noqa: E731

        # The rollback's version cannot arrive before the time: each try waits longer than the
        # client's timeout (checkin_timeout_ms, 5 s), until the link is fast again after it.
        proxy.version_delay = 8.0
        server.admin("/v1/admin/rollback", {"version": old, "discard_edits": True})
        rolled_at = time.monotonic()
        rolled = server.admin("/v1/admin/status")["sync"]["staged_version"]
        if left() < 2.0:
            pytest.skip(f"rolled back only {left():.1f} s before the activation time")
        # The client hears of it: a check-in after the rollback, before the time.
        assert wait_for(lambda: proxy.checkins(rolled_at), timeout=left() - 0.2)
        heard = left()

        served = {}
        while left() > -5:
            with client.snapshot() as s:
                served.setdefault(s.version, round(-left(), 3))
            if left() < -0.5:
                proxy.version_delay = 0
            time.sleep(0.002)
        print(f"armed {new}, rolled back to {old} as {rolled}, heard {heard:.1f} s before the "
              f"activation time; versions served, from (s after the time): {served}")
        assert new not in served, \
            f"served version {new}, which the farm never activated, from T+{served.get(new)} s"
        history = {h["version"]: h for h in server.admin("/v1/admin/history")}
        assert not history[new].get("activated_us")
    finally:
        if client:
            client.close()
        if proxy:
            proxy.stop()
        server.stop()


def test_a_rollback_made_after_an_activation_time_never_changes_what_that_time_activated(
        workdir):
    server = Server(workdir, interval="1s", min_window="500ms")
    try:
        server.put("price", "old")
        server.wait_active("price", "old")
        old = server.admin("/v1/admin/status")["sync"]["active_version"]
        server.admin("/v1/admin/interval", {"interval": "4s", "min_window": "2s"})
        server.put("price", "new")

        def table():  # a check-in, as a client makes them: it performs a due rotation
            with urllib.request.urlopen(server.url + "/v1/checkin?name=judge") as r:
                answer = json.loads(r.read())
            return answer.get("sync", answer)  # the sync table's fields, nested or not

        assert wait_for(lambda: table()["staged_version"] > old, timeout=30, interval=0.2)
        sync = table()
        new, t = sync["staged_version"], sync["activation_time_us"]
        # Every client holding `new` switches to it at t. A moment after t, before the first
        # check-in after t (clients spread theirs over up to a tenth of the window, 1 s at
        # most), an administrator rolls back.
        while time.time() * 1e6 < t + 300_000:
            time.sleep(0.005)
        server.admin("/v1/admin/rollback", {"version": old, "discard_edits": True})
        table()
        history = {h["version"]: h for h in server.admin("/v1/admin/history")}
        activated = {v: h.get("activated_us") and (h["activated_us"] - t) / 1e6
                     for v, h in history.items()}
        print(f"staged {new} for t; rolled back 0.3 s after t; activated, s after t: {activated}")
        assert history[new].get("activated_us") == t, \
            f"version {new}, which clients switched to at t, is recorded as never activated"
    finally:
        server.stop()
